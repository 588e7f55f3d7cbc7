"""Trainings of one corpus queue on the live stack (flows/limits.py): while a training holds
``train-<corpus>``, a second one waits; trainings of another corpus do not."""

from __future__ import annotations

import contextvars
import threading
import time

import pytest
from prefect import get_client
from prefect.concurrency.sync import concurrency

from flows.limits import TRAINING_SLOTS, ensure_limit, training_limit
from flows.storage import ManifestVersionNotFoundError
from flows.train import train

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

HOLD_S = 12.0


def start_training(corpus: str) -> tuple[threading.Thread, dict]:
    """Run the train flow of ``corpus`` in a thread; it fails once it starts working, since the
    test's private data bucket holds no manifest. Returns the thread and what it recorded."""
    seen: dict = {}

    def run() -> None:
        began = time.monotonic()
        seen["state"] = train(corpus=corpus, return_state=True)
        seen["after_s"] = time.monotonic() - began

    thread = threading.Thread(target=contextvars.copy_context().run, args=(run,), daemon=True)
    thread.start()
    return thread, seen


def test_a_second_training_of_a_corpus_waits_for_the_first(live_bucket, prefect_api):
    name = training_limit("savee")
    ensure_limit(name, TRAINING_SLOTS)
    with get_client(sync_client=True) as client:
        assert client.read_global_concurrency_limit_by_name(name).limit == 1
    with concurrency(name, occupy=1, strict=True):  # a first training of savee holds the slot
        waiting, seen_waiting = start_training("savee")
        other, seen_other = start_training("iemocap")
        other.join(HOLD_S * 4)
        assert "state" in seen_other, "a training of another corpus must not wait for savee's slot"
        time.sleep(max(0.0, HOLD_S - seen_other["after_s"]))
        assert "state" not in seen_waiting, "the second training of savee ran while the first held the slot"
    waiting.join(120)
    assert seen_waiting["after_s"] >= HOLD_S
    for seen in (seen_waiting, seen_other):
        with pytest.raises(ManifestVersionNotFoundError):
            seen["state"].result()
