"""Classification metrics over a whole fold (numpy only; aggregate predictions first, never average per batch).

WA (weighted accuracy) = accuracy = Σ_c n_cc / N.
UA (unweighted accuracy) = mean over classes present in y_true of recall_c = n_cc / Σ_k n_ck.
macro-F1 = mean over classes present in y_true or y_pred of F1_c = 2 n_cc / (Σ_k n_ck + Σ_k n_kc).
confusion[t][p] = number of utterances of true class t predicted as p.

The keys ``"WA"``, ``"UA"``, ``"macro_f1"`` (:data:`HEADLINE_METRICS`) are the one spelling of these
metrics everywhere: ``classification_metrics``' output, ``TrainConfig.select_metric``,
``metrics.jsonl`` and ``result.json``, the MLflow metric names and the benchmarks' tables.
:func:`selection_rule` is the one wording of how a checkpoint is chosen by one of them.

numpy is imported inside the functions: ``ser_model.config`` imports this module for
:data:`HEADLINE_METRICS`, and ``ser --help`` (which loads the config) starts without numpy.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, get_args

if TYPE_CHECKING:
    import numpy as np

HeadlineMetric = Literal["WA", "UA", "macro_f1"]
HEADLINE_METRICS: tuple[str, ...] = get_args(HeadlineMetric)
"""The headline metrics of every evaluation (accuracy, mean per-class recall, macro F1), in table order."""

DEFAULT_UA_MARGIN = 0.10
"""How far (absolute UA) a champion may fall below its cross-validated fold mean on new data before the
monitor flags it (ser_model/monitor.py)."""


def mean_and_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation of scores over folds (or runs), the one std of the project.

    ``mean = (1/K) Σ_k x_k``, ``std = sqrt(Σ_k (x_k − mean)² / (K − 1))``: the sample std (Bessel's
    K − 1), the spread a cross-validation table reports; 0 for a single value.
    """
    if not values:
        raise ValueError("mean_and_std: no values; expected at least one score")
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values, mean) if len(values) > 1 else 0.0)


def summary_name(metric: str, statistic: str) -> str:
    """Name of a statistic over folds of a headline metric: ``summary_name("UA", "mean")`` → ``UA_mean``
    (MLflow metric of a parent run, key of :func:`fold_summary`)."""
    return f"{metric}_{statistic}"


def headline_scores(result: Mapping[str, Any], split: str = "test") -> dict[str, float]:
    """The :data:`HEADLINE_METRICS` (``{"WA": …, "UA": …, "macro_f1": …}``) of one split
    (``valid``, ``test``) of a fold's result, with an error naming what is missing."""
    metrics = result.get(split) or {}
    missing = [m for m in HEADLINE_METRICS if m not in metrics]
    if missing:
        raise ValueError(f"the fold result has no {split} metric(s) {missing}; got keys {sorted(metrics)}")
    return {m: float(metrics[m]) for m in HEADLINE_METRICS}


def fold_summary(fold_metrics: Mapping[int, Mapping[str, float]]) -> dict[str, float]:
    """Mean and sample std (:func:`mean_and_std`) over folds of each headline metric.

    ``fold_metrics``: fold → ``{"WA": …, "UA": …, "macro_f1": …}``. Returns ``{"n_folds": K,
    "WA_mean": …, "WA_std": …, "UA_mean": …, …}`` (names from :func:`summary_name`).
    """
    if not fold_metrics:
        raise ValueError("fold_summary: no fold results; expected at least one fold's test metrics")
    summary: dict[str, float] = {"n_folds": float(len(fold_metrics))}
    for name in HEADLINE_METRICS:
        mean, std = mean_and_std([float(m[name]) for m in fold_metrics.values()])
        summary[summary_name(name, "mean")] = mean
        summary[summary_name(name, "std")] = std
    return summary


def summed_confusion(confusions: Iterable[Any]) -> np.ndarray:
    """Element-wise sum of per-fold confusion matrices (rows = true class, columns = predicted),
    all C×C for the same C: the confusion of the whole cross-validation."""
    import numpy as np

    stacked = [np.asarray(c, dtype=np.int64) for c in confusions]
    if not stacked:
        raise ValueError("summed_confusion: no confusion matrices given")
    shapes = {c.shape for c in stacked}
    if len(shapes) != 1 or stacked[0].ndim != 2 or stacked[0].shape[0] != stacked[0].shape[1]:
        raise ValueError(f"summed_confusion: expected square matrices of one shape, got {sorted(shapes)}")
    return np.sum(stacked, axis=0)


def fold_metric_name(fold: int, metric: str) -> str:
    """Name of one fold's score on the parent run of a cross-validation: ``fold_3.UA``
    (:func:`fold_of_metric_name` reads it back)."""
    return f"fold_{fold}.{metric}"


def fold_of_metric_name(name: str, metric: str) -> int | None:
    """The fold of a :func:`fold_metric_name` of ``metric`` (``"fold_3.UA"``, ``"UA"`` → 3), else None."""
    fold, dot, rest = name.removeprefix("fold_").partition(".")
    if not name.startswith("fold_") or not dot or rest != metric or not fold.isdigit():
        return None
    return int(fold)


def metric_leaves(record: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, float]]:
    """Every finite numeric leaf of a nested metrics record (an epoch of ``metrics.jsonl``, an
    evaluation), nested keys joined by ``.``: ``{"train": {"loss": 1.2}}`` → ``("train.loss", 1.2)``.
    Booleans, text, NaN and infinities are not metrics."""
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from metric_leaves(value, f"{name}.")
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            yield name, float(value)


def probability_column(label: str) -> str:
    """Name of the field or column holding P(label) in every output: ``p_<label>`` (``ser predict``,
    the segments' records, the MLflow pyfunc; here, torch-free, so the flows name it without torch)."""
    return f"p_{label}"


def selection_rule(metric: str, speakers: dict[str, list[str]] | None = None) -> str:
    """How a checkpoint is chosen: the epoch with the best validation ``metric`` (one of
    :data:`HEADLINE_METRICS`) on the validation speakers, never on the test speakers.

    With ``speakers`` (``{"valid": [...], "test": [...]}`` of one fold; an empty test list for
    the release model) the rule names them, as each fold's result.json records it; without, it
    states the protocol of every fold (the train flow's ``ser.selection_rule`` tag).
    """
    if speakers is None:
        return f"best validation {metric} on validation speakers drawn from each fold's training speakers; test speakers never used for selection"
    text = f"best validation {metric} on validation speakers {speakers['valid']}"
    if speakers["test"]:
        return f"{text}; test speakers {speakers['test']} never used for selection"
    return f"{text}; release model, no test speakers"


def last_epoch_rule(epochs: int) -> str:
    """How the release model of ``TrainConfig.release_holdout`` False is chosen: no selection, the
    last epoch of its fixed schedule, every speaker trained on (result.json ``selection_rule``)."""
    return f"last epoch of a fixed {epochs}-epoch schedule, no epoch selected; release model trained on every speaker, none held out"


def ensemble_rule(seeds: Sequence[int], epochs: int) -> str:
    """How the release model of ``TrainConfig.release_seeds`` > 1 is made (result.json ``selection_rule``)."""
    return (
        f"ensemble of {len(seeds)} models (seeds {', '.join(map(str, seeds))}), mean class probability; each the "
        f"{last_epoch_rule(epochs)}"
    )


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """(C, C) int64 counts, rows = true class, columns = predicted class."""
    import numpy as np

    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def classification_metrics(
    y_true: Sequence[int] | np.ndarray,
    y_pred: Sequence[int] | np.ndarray,
    n_classes: int,
    labels: Sequence[str] | None = None,
) -> dict[str, Any]:
    """WA, UA, macro-F1, per-class recall and the confusion matrix (module docstring has the formulas).

    y_true, y_pred (N,) class indices in [0, n_classes). Returns a JSON-able dict:
    ``n``, ``WA``, ``UA``, ``macro_f1`` (floats in [0, 1]), ``per_class_recall`` (label → recall,
    None for a class absent from y_true), ``confusion`` (C × C nested list), ``labels``.
    """
    import numpy as np

    y_true = np.asarray(y_true, dtype=np.int64).ravel()
    y_pred = np.asarray(y_pred, dtype=np.int64).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(
            f"classification_metrics: y_true has {y_true.size} items but y_pred has {y_pred.size}; expected equal"
        )
    if y_true.size == 0:
        raise ValueError("classification_metrics: no predictions; expected at least one")
    for name, y in (("y_true", y_true), ("y_pred", y_pred)):
        if y.min() < 0 or y.max() >= n_classes:
            raise ValueError(
                f"classification_metrics: {name} has values in [{y.min()}, {y.max()}], expected [0, {n_classes})"
            )
    if labels is None:
        labels = [str(c) for c in range(n_classes)]
    if len(labels) != n_classes:
        raise ValueError(f"classification_metrics: {len(labels)} labels for n_classes={n_classes}")
    cm = confusion_matrix(y_true, y_pred, n_classes)
    support = cm.sum(axis=1)  # (C,) true count per class
    predicted = cm.sum(axis=0)  # (C,) predicted count per class
    hits = np.diag(cm)
    present = support > 0
    recall = np.divide(hits, support, out=np.zeros(n_classes), where=present)
    f1_support = support + predicted
    f1_classes = f1_support > 0
    f1 = np.divide(2 * hits, f1_support, out=np.zeros(n_classes), where=f1_classes)
    return {
        "n": int(y_true.size),
        "WA": float(hits.sum() / y_true.size),
        "UA": float(recall[present].mean()),
        "macro_f1": float(f1[f1_classes].mean()),
        "per_class_recall": {
            label: (float(recall[c]) if present[c] else None) for c, label in enumerate(labels)
        },
        "confusion": cm.tolist(),
        "labels": list(labels),
    }


def duration_weighted_metrics(
    truth: Sequence[tuple[float, float, int]],
    predicted: Sequence[tuple[float, float, int]],
    n_classes: int,
    labels: Sequence[str] | None = None,
) -> dict[str, Any]:
    """WA and UA of labelled time spans, each second of true speech weighted alike (segment-level scoring).

    truth: [(start_s, end_s, class)] of the reference utterances; predicted: [(start_s, end_s, class)]
    of the segments (neither need be sorted; predicted spans should not overlap). confusion_s[t][p]
    = seconds of utterances of class t covered by segments of class p; seconds of true speech
    that no segment covers are ``missed_s`` per class, and count as errors:
        recall_c = confusion_s[c][c] / Σ_{utterances of class c} (end − start),
        UA = mean of recall_c over classes present in truth,  WA = Σ_c confusion_s[c][c] / Σ durations.
    Returns ``WA``, ``UA``, ``per_class_recall``, ``confusion_s``, ``missed_s``, ``speech_s``, ``labels``.
    """
    import numpy as np

    if not truth:
        raise ValueError("duration_weighted_metrics: no reference spans; expected at least one")
    labels = list(labels) if labels is not None else [str(c) for c in range(n_classes)]
    confusion = np.zeros((n_classes, n_classes))
    support = np.zeros(n_classes)
    pred = np.array([(s, e, c) for s, e, c in predicted], dtype=np.float64).reshape(-1, 3)
    for start, end, c in truth:
        if not end > start or not 0 <= c < n_classes:
            raise ValueError(f"duration_weighted_metrics: bad reference span ({start}, {end}, class {c})")
        support[c] += end - start
        overlap = np.clip(np.minimum(pred[:, 1], end) - np.maximum(pred[:, 0], start), 0.0, None)  # (P,)
        np.add.at(confusion[c], pred[:, 2].astype(np.int64), overlap)
    present = support > 0
    recall = np.divide(np.diag(confusion), support, out=np.zeros(n_classes), where=present)
    return {
        "WA": float(np.trace(confusion) / support.sum()),
        "UA": float(recall[present].mean()),
        "per_class_recall": {
            label: (float(recall[c]) if present[c] else None) for c, label in enumerate(labels)
        },
        "confusion_s": confusion.tolist(),
        "missed_s": (support - confusion.sum(axis=1)).tolist(),
        "speech_s": float(support.sum()),
        "labels": labels,
    }


def boundary_errors(
    truth: Sequence[tuple[float, float]], predicted: Sequence[tuple[float, float]]
) -> np.ndarray:
    """Seconds between each reference boundary and the nearest predicted boundary of its kind:
    for every reference span, |start − nearest segment start| and |end − nearest segment end|.
    (2·len(truth),) float64, onsets then offsets; inf when nothing was predicted."""
    import numpy as np

    starts = np.array([s for s, _ in predicted], dtype=np.float64)
    ends = np.array([e for _, e in predicted], dtype=np.float64)
    if len(starts) == 0:
        return np.full(2 * len(truth), np.inf)
    onsets = [np.abs(starts - s).min() for s, _ in truth]
    offsets = [np.abs(ends - e).min() for _, e in truth]
    return np.array(onsets + offsets, dtype=np.float64)
