"""Fold metrics against loop references written here; the checkpoint selection rule's wording."""

import numpy as np
import pytest

from ser_model.metrics import HEADLINE_METRICS, classification_metrics, selection_rule


def reference(y_true, y_pred, n_classes):
    n = len(y_true)
    cm = [[0] * n_classes for _ in range(n_classes)]
    for t, p in zip(y_true, y_pred):
        cm[t][p] += 1
    wa = sum(cm[c][c] for c in range(n_classes)) / n
    recalls, f1s = {}, []
    for c in range(n_classes):
        support = sum(cm[c])
        predicted = sum(cm[r][c] for r in range(n_classes))
        if support:
            recalls[c] = cm[c][c] / support
        if support or predicted:
            precision = cm[c][c] / predicted if predicted else 0.0
            recall = cm[c][c] / support if support else 0.0
            f1s.append(0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall))
    return cm, wa, sum(recalls.values()) / len(recalls), sum(f1s) / len(f1s), recalls


@pytest.mark.parametrize("seed", range(20))
def test_metrics_match_loop_reference(seed):
    rng = np.random.default_rng(seed)
    n_classes = int(rng.integers(2, 9))
    n = int(rng.integers(1, 60))
    y_true = rng.integers(
        0, n_classes - (seed % 2), size=n
    )  # odd seeds leave the last class absent from y_true
    y_pred = np.where(rng.random(n) < 0.5, y_true, rng.integers(0, n_classes, size=n))
    labels = [f"c{c}" for c in range(n_classes)]
    m = classification_metrics(y_true, y_pred, n_classes, labels)
    cm, wa, ua, f1, recalls = reference(y_true.tolist(), y_pred.tolist(), n_classes)
    assert m["confusion"] == cm
    assert set(HEADLINE_METRICS) <= set(m)  # the keys result.json, the flows and the benchmarks read
    assert m["WA"] == pytest.approx(wa)
    assert m["UA"] == pytest.approx(ua)
    assert m["macro_f1"] == pytest.approx(f1)
    assert m["n"] == n and m["labels"] == labels
    for c, label in enumerate(labels):
        assert m["per_class_recall"][label] == (pytest.approx(recalls[c]) if c in recalls else None)


def test_perfect_and_imbalanced_predictions():
    y = [0, 0, 0, 0, 0, 0, 0, 0, 1, 2]
    assert classification_metrics(y, y, 3)["UA"] == 1.0
    majority = classification_metrics(y, [0] * 10, 3)
    assert majority["WA"] == 0.8 and majority["UA"] == pytest.approx(
        1 / 3
    )  # UA is not fooled by the majority class


@pytest.mark.parametrize(
    "y_true, y_pred, n_classes, match",
    [
        ([0, 1], [0], 2, "y_true has 2 items but y_pred has 1"),
        ([0, 3], [0, 1], 3, r"y_true has values in \[0, 3\]"),
        ([], [], 2, "no predictions"),
    ],
)
def test_bad_input_is_rejected(y_true, y_pred, n_classes, match):
    with pytest.raises(ValueError, match=match):
        classification_metrics(y_true, y_pred, n_classes)


@pytest.mark.parametrize("metric", HEADLINE_METRICS)
def test_selection_rule_names_the_metric_and_who_selects(metric):
    fold = selection_rule(metric, {"train": ["S03"], "valid": ["S02"], "test": ["S01"]})
    assert (
        fold
        == f"best validation {metric} on validation speakers ['S02']; test speakers ['S01'] never used for selection"
    )
    release = selection_rule(metric, {"train": ["S01", "S03"], "valid": ["S02"], "test": []})
    assert (
        release.startswith(f"best validation {metric} on validation speakers ['S02']")
        and "release model, no test speakers" in release
    )
    protocol = selection_rule(metric)
    assert protocol.startswith(
        f"best validation {metric} on validation speakers drawn from each fold's training speakers"
    )
    assert protocol.endswith("test speakers never used for selection")
