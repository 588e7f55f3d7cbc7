"""benchmarks/ensemble.py: the ensemble's decision is the argmax of the mean probability, each single
model's figures reproduce the evaluation of `fit`, and only folds with two seeds' best/ are scored."""

from __future__ import annotations

import json

import numpy as np
import pytest

from data_contracts.ingest import run_ingest
from data_contracts.labels import LABELS
from ser_model.evaluation import evaluate_rows
from ser_model.model import SERModel
from ser_model.train import training_splits
from tests.fixtures.champions import tiny_ravdess_checkpoint
from tests.fixtures.corpora import make_ravdess
from tests.fixtures.scripts import load_script


@pytest.fixture(scope="module")
def ensemble():
    return load_script("benchmarks/ensemble.py", "bench_ensemble")


def test_the_ensemble_decides_by_the_mean_probability(ensemble):
    labels = ("a", "b", "c")
    y_true = np.array([0, 1, 2, 0])
    first = np.array([[0.9, 0.1, 0.0], [0.1, 0.45, 0.45], [0.0, 0.6, 0.4], [0.4, 0.6, 0.0]])
    second = np.array([[0.2, 0.8, 0.0], [0.0, 0.6, 0.4], [0.1, 0.1, 0.8], [0.45, 0.1, 0.45]])
    scores = ensemble.ensemble_metrics([first, second], y_true, labels)
    # first: 0 ✓, 1 ✓ (tie → first index), 1 ✗, 1 ✗; second: 1 ✗, 1 ✓, 2 ✓, 0 ✓ (tie → first index)
    assert [m["WA"] for m in scores["singles"]] == [0.5, 0.75]
    mean = (first + second) / 2  # row 0: a (0.55); 1: b (0.525); 2: c (0.6); 3: a (0.425 against 0.35)
    assert mean.argmax(axis=1).tolist() == [0, 1, 2, 0]
    assert scores["ensemble"]["WA"] == 1.0 and scores["ensemble"]["confusion"] == [
        [2, 0, 0],
        [0, 1, 0],
        [0, 0, 1],
    ]
    with pytest.raises(ValueError, match="at least two models"):
        ensemble.ensemble_metrics([first], y_true, labels)
    with pytest.raises(ValueError, match=r"expected \(4, 3\)"):
        ensemble.ensemble_metrics([first, second[:3]], y_true, labels)


def test_the_grid_is_scored_where_two_seeds_kept_their_model(ensemble, tmp_path):
    corpus, grid = tmp_path / "corpus", tmp_path / "grid"
    make_ravdess(corpus, actors=range(1, 9), per_actor=3)
    ingest = run_ingest("ravdess", str(corpus), progress=False)
    rows = training_splits(ingest.manifest, ingest.folds, 0)["test"]
    models = []
    for seed in (0, 1):
        run = grid / "full" / f"seed-{seed}" / "fold-0"
        best = tiny_ravdess_checkpoint(run / "best", seed=seed)
        model = SERModel.from_pretrained(best)
        test = evaluate_rows(model, rows, corpus)  # what fit records
        (run / "result.json").write_text(json.dumps({"fold": 0, "test": test}))
        models.append(model)
    lone = grid / "full" / "seed-0" / "fold-1"  # one seed only: not an ensemble
    tiny_ravdess_checkpoint(lone / "best")
    (lone / "result.json").write_text(json.dumps({"fold": 1, "test": {}}))
    (grid / "full" / "seed-1" / "fold-1").mkdir()  # no result.json yet

    assert sorted(ensemble.fold_runs(grid, "full")) == [0, 1]
    assert sorted(ensemble.fold_runs(grid, "full")[1]) == [0]
    assert (
        ensemble.main(
            [
                "--root",
                str(corpus),
                "--grid",
                str(grid),
                "--out",
                str(tmp_path / "out"),
                "--variants",
                "full",
                "--threads",
                "1",
            ]
        )
        == 0
    )
    report = json.loads((tmp_path / "out" / "ensemble.json").read_text())
    (fold,) = report["variants"]["full"]["folds"].values()
    assert list(report["variants"]["full"]["folds"]) == ["0"]
    assert fold["reproduces_result_json"] == [True, True], "the Predictor scores as fit's evaluation did"
    expected = [100 * evaluate_rows(m, rows, corpus)["UA"] for m in models]
    assert fold["single_UA"] == pytest.approx(expected)
    assert fold["n"] == len(rows) and len(fold["seconds_per_model"]) == 2
    assert set(fold["ensemble_recall"]) == set(LABELS["ravdess"])
    assert "| full | 0 | 0,1 |" in (tmp_path / "out" / "ensemble.md").read_text()
    assert (
        ensemble.main(["--root", str(corpus), "--grid", str(tmp_path / "empty"), "--variants", "full"]) == 2
    )
