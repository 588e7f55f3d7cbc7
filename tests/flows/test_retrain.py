"""The retrain flow: nothing when the source is unchanged; ingest + train when it changed.

The live test replaces the train flow by a recording stand-in (a real Prefect subflow with
the same parameters) so it checks the decisions, not model training (tests/e2e trains for real).
"""

from __future__ import annotations

import os

import pytest
from prefect import flow

import flows.retrain
from flows.retrain import RetrainError, decisions_markdown, retrain, source_unchanged
from flows.storage import read_latest, read_source_state
from tests.fixtures.corpora import make_ravdess

pytestmark = pytest.mark.timeout(240)


def test_source_is_unchanged_only_for_the_same_root_and_fingerprint():
    seen = {"root": "/data/ravdess", "source_fingerprint": "f1"}
    assert source_unchanged(seen, "/data/ravdess", "f1")
    assert not source_unchanged(seen, "/data/ravdess", "f2")
    assert not source_unchanged(seen, "/elsewhere/ravdess", "f1")
    assert not source_unchanged(None, "/data/ravdess", "f1")


def test_decisions_table_lists_every_corpus():
    text = decisions_markdown({"ravdess": "unchanged: x", "savee": "skipped: no root"})
    assert "| ravdess | unchanged: x |" in text and "| savee | skipped: no root |" in text


@pytest.fixture
def train_calls(monkeypatch) -> list[dict]:
    calls: list[dict] = []

    @flow(name="train")
    def recording_train(
        corpus, manifest_version="latest", preset="cpu-fbank", backbone=None, overrides=None, folds=None
    ):
        calls.append(
            {
                "corpus": corpus,
                "manifest_version": manifest_version,
                "preset": preset,
                "backbone": backbone,
                "overrides": overrides,
                "folds": folds,
            }
        )
        return {"version": str(len(calls))}

    monkeypatch.setattr(flows.retrain, "train", recording_train)
    return calls


@pytest.mark.integration
def test_retrain_acts_only_on_changes(live_bucket, prefect_api, train_calls, tmp_path, monkeypatch):
    monkeypatch.delenv("SER_ROOT_SAVEE", raising=False)
    root = tmp_path / "ravdess"
    make_ravdess(root, actors=range(1, 9), per_actor=2)
    run = dict(
        corpora=["ravdess", "savee"], roots={"ravdess": str(root)}, overrides={"train.epochs": 1}, folds=[0]
    )

    first = retrain(**run)
    assert first["ravdess"].startswith("retrained on manifest")
    assert first["savee"].startswith("skipped: no root configured") and "SER_ROOT_SAVEE" in first["savee"]
    latest = read_latest("ravdess", live_bucket)["fingerprint"]
    assert train_calls == [
        {
            "corpus": "ravdess",
            "manifest_version": latest,
            "preset": "cpu-fbank",
            "backbone": None,
            "overrides": {"train.epochs": 1},
            "folds": [0],
        }
    ]
    assert read_source_state("ravdess", live_bucket)["manifest_fingerprint"] == latest

    assert retrain(**run)["ravdess"].startswith("unchanged: source fingerprint")
    assert len(train_calls) == 1

    touched = next(root.rglob("*.wav"))
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))
    assert retrain(**run)["ravdess"].startswith("manifest unchanged")
    assert len(train_calls) == 1

    make_ravdess(root, actors=range(9, 11), per_actor=2)
    assert retrain(**run)["ravdess"].startswith("retrained on manifest")
    assert len(train_calls) == 2
    assert train_calls[1]["manifest_version"] == read_latest("ravdess", live_bucket)["fingerprint"] != latest

    (tmp_path / "savee").mkdir()
    state = retrain(
        **{**run, "roots": {"ravdess": str(root), "savee": str(tmp_path / "savee")}}, return_state=True
    )
    assert state.is_failed()
    with pytest.raises(RetrainError, match="savee: .*Error"):
        state.result()
    assert len(train_calls) == 2
