"""Fold metrics against loop references written here."""

import numpy as np
import pytest

from ser_model.metrics import classification_metrics


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
    y_true = rng.integers(0, n_classes - (seed % 2), size=n)  # odd seeds leave the last class absent from y_true
    y_pred = np.where(rng.random(n) < 0.5, y_true, rng.integers(0, n_classes, size=n))
    labels = [f"c{c}" for c in range(n_classes)]
    m = classification_metrics(y_true, y_pred, n_classes, labels)
    cm, wa, ua, f1, recalls = reference(y_true.tolist(), y_pred.tolist(), n_classes)
    assert m["confusion"] == cm
    assert m["wa"] == pytest.approx(wa)
    assert m["ua"] == pytest.approx(ua)
    assert m["macro_f1"] == pytest.approx(f1)
    assert m["n"] == n and m["labels"] == labels
    for c, label in enumerate(labels):
        assert m["per_class_recall"][label] == (pytest.approx(recalls[c]) if c in recalls else None)


def test_perfect_and_imbalanced_predictions():
    y = [0, 0, 0, 0, 0, 0, 0, 0, 1, 2]
    assert classification_metrics(y, y, 3)["ua"] == 1.0
    majority = classification_metrics(y, [0] * 10, 3)
    assert majority["wa"] == 0.8 and majority["ua"] == pytest.approx(1 / 3)  # UA is not fooled by the majority class


@pytest.mark.parametrize(
    "y_true, y_pred, n_classes, match",
    [([0, 1], [0], 2, "y_true has 2 items but y_pred has 1"), ([0, 3], [0, 1], 3, r"y_true has values in \[0, 3\]"), ([], [], 2, "no predictions")],
)
def test_bad_input_is_rejected(y_true, y_pred, n_classes, match):
    with pytest.raises(ValueError, match=match):
        classification_metrics(y_true, y_pred, n_classes)
