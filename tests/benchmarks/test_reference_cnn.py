"""benchmarks/reference_cnn.py, the accuracy grid's plain reference, trained for a few epochs on a tiny
synthetic RAVDESS tree: it follows the protocol it claims to share with the method (the learning-rate
schedule of `ser_model.optimisation.lr_factor` under the cpu-fbank preset, the fold's speaker splits, the
checkpoint chosen by validation UA) and writes the files benchmarks/accuracy.py summarises."""

from __future__ import annotations

import json

import pytest

from tests.fixtures.corpora import make_ravdess
from tests.fixtures.scripts import load_script

EPOCHS = 3


@pytest.fixture(scope="module")
def reference():
    return load_script("benchmarks/reference_cnn.py", "bench_reference_cnn")


def test_a_short_run_follows_the_shared_schedule_and_selects_on_validation_speakers(
    reference, tmp_path, monkeypatch
):
    from data_contracts.ingest import run_ingest
    from data_contracts.labels import LABELS
    from ser_model.optimisation import lr_factor
    from ser_model.presets import experiment_config
    from ser_model.train import training_splits

    root = tmp_path / "ravdess"
    make_ravdess(root, actors=range(1, 21), per_actor=4)
    ingest = run_ingest("ravdess", root, progress=False)
    monkeypatch.setitem(reference.RECIPE, "epochs", EPOCHS)
    out = tmp_path / "run"
    result = reference.train_reference(ingest.manifest, ingest.folds, 1, root, out, LABELS["ravdess"], seed=0)

    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == list(range(1, EPOCHS + 1))
    # the learning rate after epoch e is the base rate times the method's factor at update e · (batches per epoch)
    schedule = experiment_config(
        "ravdess", reference.PROTOCOL_PRESET, overrides={"train.epochs": EPOCHS}
    ).train
    assert schedule.schedule == "cosine" and schedule.warmup_epochs > 0
    n_train = len(training_splits(ingest.manifest, ingest.folds, 1)["train"])
    per_epoch = -(-n_train // reference.RECIPE["batch_size"])  # length-bucketed batches of at most batch_size
    for h in history:
        expected = reference.RECIPE["lr"] * lr_factor(h["epoch"] * per_epoch, per_epoch, schedule)
        assert h["lr"] == pytest.approx(expected, abs=1e-12), (h["epoch"], h["lr"], expected)
    assert history[-1]["lr"] == pytest.approx(0.0, abs=1e-12)  # the cosine ends at zero

    # selection: the epoch with the best validation UA (first on ties); test speakers apart from both
    best = max(range(EPOCHS), key=lambda e: (history[e]["valid"]["UA"], -e))
    assert result["selected_epoch"] == best + 1
    assert result["valid"]["UA"] == pytest.approx(history[best]["valid"]["UA"])
    speakers = result["speakers"]
    assert not set(speakers["test"]) & (set(speakers["train"]) | set(speakers["valid"]))
    assert not set(speakers["valid"]) & set(speakers["train"])
    assert json.loads((out / "result.json").read_text())["test"]["UA"] == pytest.approx(result["test"]["UA"])
