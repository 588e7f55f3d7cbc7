"""Calibrated confidence: temperature scaling fitted on validation speakers, its figures, and the
"uncertain" answer below a confidence threshold.

Temperature scaling (Guo et al., 2017) divides every logit by one scalar T > 0 fitted by the
negative log-likelihood on held-out data:

    p_T(c | x) = softmax(z(x) / T)_c,      T* = argmin_T  −(1/N) Σ_i log p_T(y_i | x_i)

It never changes the argmax, so accuracy and UA are unchanged; only the probabilities move. A fold
fits T on its validation speakers after its epoch is selected and reports, on its test speakers,
expected calibration error (15 equal-width confidence bins), Brier score and NLL before and after
(:func:`calibration_record`, ``calibration`` in result.json). The release model, without validation
speakers, takes the median of the folds' temperatures (:func:`release_temperature`). An ensemble is
calibrated as the ensemble: T divides the log of its mean probability.

The temperature lives in the model folder (:data:`CALIBRATION_FILE`), so every path that loads the
folder (``Predictor``, segments, the pyfunc, the ONNX export) returns calibrated probabilities.

Confidence is the calibrated top probability. Below a threshold P the answer is ``"uncertain"``
(:func:`decision`), the probabilities kept; at P = 0 nothing is. The coverage of a threshold is the
share of answers kept (confidence ≥ P) and their accuracy; :func:`threshold_table` picks, on pooled
fold counts, the smallest P whose kept answers reach a target accuracy.

The module loads torch only inside the two functions that compute with it
(:func:`scaled_probabilities`, :func:`fit_temperature`): the flows pool the folds' figures from it in
processes that must stay torch-free (tests/test_import_rules.py).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ser_model.launch import FOLD_RESULTS_FILE, RESULT_FILE
from ser_stack.files import write_atomically

if TYPE_CHECKING:
    import torch

__all__ = [
    "CALIBRATION_FILE",
    "ECE_BINS",
    "UNCERTAIN",
    "THRESHOLD_GRID",
    "TARGET_ACCURACIES",
    "scaled_probabilities",
    "fit_temperature",
    "reliability_bins",
    "expected_calibration_error",
    "binned_calibration_error",
    "calibration_error_floor",
    "brier_score",
    "negative_log_likelihood",
    "coverage_counts",
    "calibration_record",
    "threshold_table",
    "pooled_reliability",
    "pooled_coverage",
    "CALIBRATION_FIGURES",
    "calibration_means",
    "release_temperature",
    "fold_results_beside",
    "model_folder_calibration",
    "decision",
    "write_calibration",
    "read_calibration",
    "read_temperature",
]

CALIBRATION_FILE = "calibration.json"
"""The model folder's calibration: ``{"temperature": T, "source": ..., "reference_confidence": [...]}``."""
ECE_BINS = 15
UNCERTAIN = "uncertain"
"""The label of an answer whose calibrated confidence is below the asked minimum."""
THRESHOLD_GRID = tuple(round(k / 100, 2) for k in range(100))
"""Confidence thresholds 0.00 … 0.99 at which coverage counts are recorded (poolable across folds)."""
TARGET_ACCURACIES = (0.7, 0.8, 0.9)


def scaled_probabilities(logits: np.ndarray | torch.Tensor, temperature: float) -> np.ndarray:
    """softmax(z / T) of logits (N, C), in float64: the calibrated class probabilities."""
    import torch

    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    return torch.softmax(z / temperature, dim=-1).numpy()


def fit_temperature(logits: np.ndarray, labels: np.ndarray, max_iter: int = 100) -> float:
    """T* = argmin_T −(1/N) Σ_i log softmax(z_i / T)_{y_i} over T > 0 (module docstring), by L-BFGS
    on log T from T = 1. logits (N, C), labels (N,) class indices."""
    import torch

    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    y = torch.as_tensor(np.array(labels), dtype=torch.long)
    if z.ndim != 2 or len(z) != len(y) or len(y) == 0:
        raise ValueError(
            f"fit_temperature: expected logits (N ≥ 1, C) and N labels, got {tuple(z.shape)} and {len(y)}"
        )
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    optimiser.step(closure)
    return float(log_t.detach().exp())


def reliability_bins(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> dict[str, list]:
    """Confidence (top probability) in ``bins`` equal-width bins (k/B, (k+1)/B] (the first includes 0):
    per bin its ``lower`` and ``upper`` edges, ``count``, mean ``confidence`` and ``accuracy``
    (0 for an empty bin). probabilities (N, C), labels (N,)."""
    p = np.asarray(probabilities, dtype=np.float64)
    confidence, correct = p.max(axis=1), (p.argmax(axis=1) == np.asarray(labels)).astype(np.float64)
    index = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    count = np.bincount(index, minlength=bins)
    safe = np.maximum(count, 1)
    return {
        "lower": [k / bins for k in range(bins)],
        "upper": [(k + 1) / bins for k in range(bins)],
        "count": count.tolist(),
        "confidence": (np.bincount(index, confidence, bins) / safe).tolist(),
        "accuracy": (np.bincount(index, correct, bins) / safe).tolist(),
    }


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE = Σ_b (|B_b| / N) · |acc(B_b) − conf(B_b)| over the equal-width bins of `reliability_bins`
    (:func:`binned_calibration_error` of their table)."""
    return binned_calibration_error(reliability_bins(probabilities, labels, bins))


def binned_calibration_error(table: Mapping[str, Sequence[float]]) -> float:
    """ECE of a reliability table (`reliability_bins`, or several pooled by `pooled_reliability`):
    Σ_b (n_b / N) · |acc_b − conf_b|. On one table it equals `expected_calibration_error` of the
    probabilities it came from; on a pooled table it is the ECE of every answer of the folds together."""
    count = np.asarray(table["count"], dtype=np.float64)
    gap = np.abs(np.asarray(table["accuracy"], dtype=np.float64) - np.asarray(table["confidence"]))
    return float((count * gap).sum() / max(count.sum(), 1.0))


def calibration_error_floor(table: Mapping[str, Sequence[float]]) -> float:
    """The ECE a perfectly calibrated model is expected to show on a sample of this size: the bias
    of the binned estimator, what :func:`binned_calibration_error` reads when nothing is wrong.

        floor = Σ_b (n_b / N) · E |K_b / n_b − c_b|,   K_b ~ Binomial(n_b, c_b)

    with n_b the answers in bin b and c_b their mean confidence: if every answer of confidence c is
    right with probability c, bin b's correct count is K_b (its answers' confidences taken as c_b; the
    spread within a bin only lowers the variance, so the floor is an upper estimate by a little). It
    shrinks as 1/√n_b: about 0.075 for 240 test utterances in 15 bins at RAVDESS's confidences, 0.035
    for 1,200. An observed ECE near its floor is what sampling alone gives (Bröcker & Smith 2007,
    "consistency resampling", in closed form), and ECEs that differ by less than it say little."""
    count = np.asarray(table["count"], dtype=np.int64)
    confidence = np.clip(np.asarray(table["confidence"], dtype=np.float64), 0.0, 1.0)
    total = count.sum()
    if total == 0:
        return 0.0
    expected = 0.0
    for n, c in zip(count.tolist(), confidence.tolist()):
        if n == 0 or c in (0.0, 1.0):
            continue  # an empty bin, or a certain one: K_b = n_b c_b exactly
        k = np.arange(n + 1, dtype=np.float64)
        log_choose = np.array(
            [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) for i in range(n + 1)]
        )
        pmf = np.exp(log_choose + k * math.log(c) + (n - k) * math.log1p(-c))
        expected += n * float((pmf * np.abs(k / n - c)).sum())
    return expected / float(total)


def brier_score(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """(1/N) Σ_i Σ_c (p_ic − 1[y_i = c])²: the multi-class Brier score."""
    p = np.asarray(probabilities, dtype=np.float64)
    onehot = np.eye(p.shape[1])[np.asarray(labels)]
    return float(((p - onehot) ** 2).sum(axis=1).mean())


def negative_log_likelihood(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """−(1/N) Σ_i log p_{i, y_i} (probabilities floored at the smallest float64)."""
    p = np.asarray(probabilities, dtype=np.float64)
    picked = p[np.arange(len(p)), np.asarray(labels)]
    return float(-np.log(np.maximum(picked, np.finfo(np.float64).tiny)).mean())


def coverage_counts(probabilities: np.ndarray, labels: np.ndarray) -> dict[str, list]:
    """At each threshold P of :data:`THRESHOLD_GRID`: ``kept`` = #{i: conf_i ≥ P} and ``correct`` =
    #{kept i: argmax p_i = y_i}, with ``total`` = N. Counts, so that folds pool by summing."""
    p = np.asarray(probabilities, dtype=np.float64)
    confidence, correct = p.max(axis=1), p.argmax(axis=1) == np.asarray(labels)
    kept = [int((confidence >= t).sum()) for t in THRESHOLD_GRID]
    right = [int((correct & (confidence >= t)).sum()) for t in THRESHOLD_GRID]
    return {"threshold": list(THRESHOLD_GRID), "kept": kept, "correct": right, "total": len(p)}


def calibration_record(
    valid_logits: np.ndarray, valid_labels: np.ndarray, test_logits: np.ndarray, test_labels: np.ndarray
) -> dict[str, Any]:
    """A fold's ``calibration`` block: T fitted on the validation speakers; on the test speakers
    ECE, Brier and NLL before (T = 1) and after, the reliability bins and coverage counts after, and
    the calibrated validation confidences (the monitor's reference)."""
    temperature = fit_temperature(valid_logits, valid_labels)
    before, after = scaled_probabilities(test_logits, 1.0), scaled_probabilities(test_logits, temperature)
    return {
        "method": "temperature",
        "temperature": temperature,
        "fitted_on": "validation speakers (NLL)",
        "evaluated_on": "test speakers",
        "ECE_before": expected_calibration_error(before, test_labels),
        "ECE_after": expected_calibration_error(after, test_labels),
        "brier_before": brier_score(before, test_labels),
        "brier_after": brier_score(after, test_labels),
        "NLL_before": negative_log_likelihood(before, test_labels),
        "NLL_after": negative_log_likelihood(after, test_labels),
        "reliability_before": reliability_bins(before, test_labels),
        "reliability_after": reliability_bins(after, test_labels),
        "coverage": coverage_counts(after, test_labels),
        "valid_confidence": [
            round(float(c), 4) for c in scaled_probabilities(valid_logits, temperature).max(axis=1)
        ],
    }


def threshold_table(
    coverages: Sequence[Mapping[str, Any]], targets: Sequence[float] = TARGET_ACCURACIES
) -> list[dict[str, Any]]:
    """Per target accuracy a: the smallest grid threshold P whose kept answers, pooled over the folds'
    ``coverage`` counts, reach accuracy ≥ a, with that accuracy and the share kept; P None when no
    threshold does."""
    kept = np.sum([c["kept"] for c in coverages], axis=0)
    correct = np.sum([c["correct"] for c in coverages], axis=0)
    total = sum(c["total"] for c in coverages)
    table = []
    for target in targets:
        row: dict[str, Any] = {
            "target_accuracy": target,
            "min_confidence": None,
            "accuracy": None,
            "kept_share": 0.0,
        }
        for k, threshold in enumerate(THRESHOLD_GRID):
            if kept[k] > 0 and correct[k] / kept[k] >= target:
                row.update(
                    min_confidence=threshold,
                    accuracy=float(correct[k] / kept[k]),
                    kept_share=float(kept[k] / total),
                )
                break
        table.append(row)
    return table


def pooled_reliability(tables: Sequence[Mapping[str, Any]]) -> dict[str, list]:
    """Reliability bins of several folds (`reliability_bins` tables of one bin count) as one set:
    counts summed, confidence and accuracy the count-weighted means."""
    count = np.sum([t["count"] for t in tables], axis=0)
    safe = np.maximum(count, 1)
    weighted = {
        key: np.sum([np.asarray(t[key]) * np.asarray(t["count"]) for t in tables], axis=0) / safe
        for key in ("confidence", "accuracy")
    }
    return {
        "lower": list(tables[0]["lower"]),
        "upper": list(tables[0]["upper"]),
        "count": count.tolist(),
        **{key: value.tolist() for key, value in weighted.items()},
    }


def pooled_coverage(coverages: Sequence[Mapping[str, Any]]) -> dict[str, list]:
    """Coverage counts of several folds (`coverage_counts`) as one set: per threshold the ``share``
    kept (Σ kept / Σ total) and the ``accuracy`` of the kept answers (Σ correct / Σ kept; None when
    none is kept)."""
    kept = np.sum([c["kept"] for c in coverages], axis=0)
    correct = np.sum([c["correct"] for c in coverages], axis=0)
    total = sum(c["total"] for c in coverages)
    return {
        "threshold": list(coverages[0]["threshold"]),
        "share": (kept / max(total, 1)).tolist(),
        "accuracy": [float(c / k) if k else None for c, k in zip(correct, kept)],
    }


CALIBRATION_FIGURES = (
    "temperature",
    "ECE_before",
    "ECE_after",
    "brier_before",
    "brier_after",
    "NLL_before",
    "NLL_after",
)
"""The scalar figures of a fold's calibration block (what MLflow logs as ``calibration.<name>``)."""


def calibration_means(calibrations: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """The mean over folds of each of :data:`CALIBRATION_FIGURES` (those of folds that have it)."""
    return {
        name: float(np.mean([c[name] for c in calibrations]))
        for name in CALIBRATION_FIGURES
        if calibrations and all(name in c for c in calibrations)
    }


def release_temperature(fold_results: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
    """The release model's calibration from the folds' result.json records: T = the median of their
    temperatures (the folds it came from named), or T = 1 stated as uncalibrated when none has one.
    ``reference_confidence``: the folds' calibrated validation confidences together."""
    calibrated = {k: r["calibration"] for k, r in sorted(fold_results.items()) if "calibration" in r}
    if not calibrated:
        return {
            "temperature": 1.0,
            "source": "uncalibrated: no fold result with a calibration beside the release",
        }
    temperatures = [c["temperature"] for c in calibrated.values()]
    return {
        "temperature": float(np.median(temperatures)),
        "source": f"median of the temperatures of folds {sorted(calibrated)} (fitted on their validation speakers)",
        "folds": sorted(calibrated),
        "reference_confidence": [v for c in calibrated.values() for v in c.get("valid_confidence", [])],
    }


def fold_results_beside(out_dir: str | os.PathLike) -> dict[int, dict[str, Any]]:
    """{k: result.json} of the finished folds of the release whose folder is ``out_dir``: those
    handed over in its :data:`~ser_model.launch.FOLD_RESULTS_FILE` (folds trained elsewhere), and
    the finished fold folders ``fold-<k>`` beside it (`ser_model.launch.fold_folder_name`); those
    not finished (no result.json) are left out."""
    handed = Path(out_dir) / FOLD_RESULTS_FILE
    found = (
        {int(k): r for k, r in json.loads(handed.read_text(encoding="utf-8")).items()}
        if handed.exists()
        else {}
    )
    for path in sorted(Path(out_dir).parent.glob(f"fold-*/{RESULT_FILE}")):
        suffix = path.parent.name.removeprefix("fold-")
        if suffix.isdigit():
            found[int(suffix)] = json.loads(path.read_text(encoding="utf-8"))
    return found


def model_folder_calibration(calibration: Mapping[str, Any]) -> dict[str, Any]:
    """What the model folder keeps of a fit's calibration: ``temperature``, where it comes from
    (``source``) and ``reference_confidence``, the calibrated confidences of held-out speakers that
    the monitor compares new rows with. A tuning trial's empty calibration keeps T = 1."""
    if not calibration:
        return {
            "temperature": 1.0,
            "source": "uncalibrated: the fit scored no test speakers (a tuning trial)",
        }
    source = calibration.get("source") or f"fitted on the {calibration['fitted_on']}"
    reference = calibration.get("reference_confidence", calibration.get("valid_confidence", []))
    return {"temperature": calibration["temperature"], "source": source, "reference_confidence": reference}


def decision(
    probabilities: Sequence[float], labels: Sequence[str], min_confidence: float = 0.0
) -> dict[str, Any]:
    """One answer: ``label`` (the argmax, or :data:`UNCERTAIN` when the top probability is below
    ``min_confidence``), ``confidence`` (the top probability) and ``probabilities`` {label: p}."""
    if not 0.0 <= min_confidence <= 1.0 or math.isnan(min_confidence):
        raise ValueError(f"min_confidence must be in [0, 1], got {min_confidence}")
    p = np.asarray(probabilities, dtype=np.float64)
    top = int(np.argmax(p))
    confidence = float(p[top])
    return {
        "label": UNCERTAIN if confidence < min_confidence else labels[top],
        "confidence": confidence,
        "probabilities": {label: float(v) for label, v in zip(labels, p)},
    }


def write_calibration(folder: str | os.PathLike, calibration: Mapping[str, Any]) -> None:
    """The model folder's :data:`CALIBRATION_FILE` (``temperature``, ``source`` and the rest of ``calibration``)."""
    write_atomically(Path(folder) / CALIBRATION_FILE, json.dumps(dict(calibration), indent=2) + "\n")


def read_calibration(folder: str | os.PathLike) -> dict[str, Any]:
    """The model folder's calibration; a folder without :data:`CALIBRATION_FILE` (a tuning trial,
    a model trained before calibration) reads as T = 1, said in ``source``. Raises ValueError naming
    the file when it is not a JSON object with a positive ``temperature``."""
    path = Path(folder) / CALIBRATION_FILE
    if not path.is_file():
        return {"temperature": 1.0, "source": f"uncalibrated: no {CALIBRATION_FILE} in the model folder"}
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: cannot read the calibration ({err})") from err
    temperature = stored.get("temperature") if isinstance(stored, dict) else None
    if not isinstance(temperature, (int, float)) or not temperature > 0 or not math.isfinite(temperature):
        raise ValueError(f'{path}: expected {{"temperature": T > 0, ...}}, got {stored!r:.200}')
    return stored


def read_temperature(folder: str | os.PathLike) -> float:
    """The model folder's temperature (:func:`read_calibration`)."""
    return float(read_calibration(folder)["temperature"])
