"""Trainings of one dataset (a corpus or a table dataset) run one at a time: the Prefect global concurrency limit ``train-<corpus>``.

Every run of the ``train`` flow (a deployment run, the automation after ingest, the nightly
retrain's subflow, a call from Python) holds one slot of ``train-<corpus>`` for its whole run,
so a second training of the same corpus waits for the first instead of sharing the CPUs with
it; trainings of different corpora are not held back. The limits have one slot each, are
created by ``python -m flows.deploy`` (and by the first training if missing), and show in the
Prefect UI under Concurrency → Global, with the slots in use. A user may give a limit more
slots there (or ``prefect gcl update train-iemocap --limit 2``): creating never overwrites it.
A slot is a lease: a training killed with its worker or the server frees it within ``LEASE_S``.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from prefect import get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

from data_contracts.datasets import resolve_dataset
from ser_stack.names import TRAIN, job_name

F = TypeVar("F", bound=Callable[..., Any])

TRAINING_SLOTS = 1
LEASE_S = 300.0
"""How long a training's slot outlives the training's process if it dies without releasing it
(renewed every 3/4 of it while the run lives); the stack keeps leases on disk (infra/ser_infra/environment.py)."""


def training_limit(corpus: str) -> str:
    """Name of the corpus's training limit: ``train-<corpus>``."""
    return job_name(TRAIN, resolve_dataset(corpus).name)


def ensure_limit(name: str, slots: int) -> bool:
    """Create the global concurrency limit ``name`` with ``slots`` slots unless it exists (an
    existing one keeps its slots). True when created now. Looks before creating: the server logs
    a traceback for every refused duplicate, and infra/health counts those."""
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
            return False
        except ObjectNotFound:
            pass
        try:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=slots))
        except ObjectAlreadyExists:
            return False
    return True


@contextmanager
def training_slot(corpus: str) -> Iterator[None]:
    """Hold a slot of ``train-<corpus>`` while the block runs, waiting (and saying so in the run
    log) while another training of the corpus holds it."""
    logger = get_run_logger()
    name = training_limit(corpus)
    ensure_limit(name, TRAINING_SLOTS)
    logger.info(
        "waiting for a slot of the concurrency limit %s (trainings of %s run one at a time)", name, corpus
    )
    began = time.monotonic()
    # the slot is a lease renewed while this run lives (LEASE_S): a run that dies frees it when the
    # lease expires. A renewal that fails once (a busy server) only warns: ending a training hours in
    # for a transient error would cost more than two trainings briefly sharing the machine
    with concurrency(
        name, occupy=1, strict=True, lease_duration=LEASE_S, raise_on_lease_renewal_failure=False
    ):
        logger.info("holding %s after %.0f s of waiting", name, time.monotonic() - began)
        yield


def one_training_per_corpus(fn: F) -> F:
    """Decorate a flow function whose first parameter is ``corpus`` so each call holds the
    corpus's training slot (:func:`training_slot`); the signature Prefect sees is ``fn``'s."""

    @functools.wraps(fn)
    def run(corpus: str, *args: Any, **kwargs: Any) -> Any:
        with training_slot(corpus):
            return fn(corpus, *args, **kwargs)

    return run  # type: ignore[return-value]
