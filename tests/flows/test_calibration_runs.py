"""The calibration in MLflow (flows/training_runs.py): each fold run logs its ECE before and after
with the reliability diagram and the coverage curve; the parent logs the folds' mean and the pooled
figures."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.special import softmax

from flows.training_runs import COVERAGE_PNG, RELIABILITY_PNG, log_fold_run, log_parent_summary
from ser_model.calibration import calibration_record
from ser_model.launch import fold_folder_name
from tests.flows.conftest import CHECKPOINT_LABELS

LABELS = CHECKPOINT_LABELS


def fold_folder(tmp_path, fold: int, temperature: float) -> tuple:
    """A finished fold folder whose result.json holds the calibration of over-confident logits."""
    rng = np.random.default_rng(fold)
    n, c = 300, len(LABELS)

    def sample():
        logits = 4.0 * rng.standard_normal((n, c))
        labels = np.array([rng.choice(c, p=p) for p in softmax(logits / temperature, axis=1)])
        return logits, labels

    (vl, vy), (tl, ty) = sample(), sample()
    calibration = calibration_record(vl, vy, tl, ty)
    confusion = np.zeros((c, c), dtype=int)
    np.add.at(confusion, (ty, tl.argmax(axis=1)), 1)
    test = {"WA": 0.5, "UA": 0.5, "macro_f1": 0.5, "confusion": confusion.tolist()}
    result = {"fold": fold, "selected_epoch": 1, "valid": test, "test": test, "calibration": calibration}
    out_dir = tmp_path / fold_folder_name(fold)
    out_dir.mkdir()
    (out_dir / "result.json").write_text(json.dumps(result))
    return out_dir, result


def test_fold_runs_and_parent_log_ece_before_after_and_the_figures(local_mlflow, experiment_id, tmp_path):
    parent = local_mlflow.create_run(experiment_id).info.run_id
    outcomes = []
    for fold in (0, 1):
        out_dir, result = fold_folder(tmp_path, fold, temperature=2.0)
        run_id = log_fold_run(local_mlflow, experiment_id, parent, "ravdess", fold, out_dir, LABELS)
        metrics = local_mlflow.get_run(run_id).data.metrics
        assert metrics["calibration.ECE_after"] == pytest.approx(result["calibration"]["ECE_after"])
        assert metrics["calibration.ECE_after"] < metrics["calibration.ECE_before"]
        artifacts = {a.path for a in local_mlflow.list_artifacts(run_id, "figures")}
        assert {RELIABILITY_PNG, COVERAGE_PNG} <= artifacts
        outcomes.append({"fold": fold, "result": result, "records": []})
    summary = log_parent_summary(local_mlflow, parent, "ravdess", outcomes, LABELS)
    mean = np.mean([o["result"]["calibration"]["ECE_after"] for o in outcomes])
    assert summary["calibration.ECE_after_mean"] == pytest.approx(mean)
    assert local_mlflow.get_run(parent).data.metrics["calibration.ECE_after_mean"] == pytest.approx(mean)
    assert {RELIABILITY_PNG, COVERAGE_PNG} <= {a.path for a in local_mlflow.list_artifacts(parent, "figures")}
