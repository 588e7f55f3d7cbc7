"""Calibration metrics against references written here, the temperature fit on data of a known
temperature, and the "uncertain" answer's properties (ser_model/calibration.py)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

from ser_model.calibration import (
    CALIBRATION_FILE,
    THRESHOLD_GRID,
    UNCERTAIN,
    binned_calibration_error,
    brier_score,
    calibration_error_floor,
    calibration_record,
    coverage_counts,
    decision,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    pooled_reliability,
    read_calibration,
    release_temperature,
    reliability_bins,
    scaled_probabilities,
    threshold_table,
    write_calibration,
)


def sampled(n: int, classes: int, temperature: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits z ~ 3·N(0, 1) and labels drawn from softmax(z / temperature): data whose calibrating
    temperature is ``temperature``."""
    rng = np.random.default_rng(seed)
    logits = 3.0 * rng.standard_normal((n, classes))
    p = softmax(logits / temperature, axis=1)
    labels = np.array([rng.choice(classes, p=row) for row in p])
    return logits, labels


def reference_ece(p: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    """ECE by a loop over bins (lo, hi], the first closed at 0, each sample tested against its edges."""
    confidence, predicted = p.max(axis=1), p.argmax(axis=1)
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        members = [i for i in range(len(p)) if (lo < confidence[i] <= hi) or (b == 0 and confidence[i] == 0)]
        if members:
            accuracy = np.mean([predicted[i] == y[i] for i in members])
            mean_confidence = np.mean([confidence[i] for i in members])
            total += len(members) / len(p) * abs(accuracy - mean_confidence)
    return total


def test_metrics_match_references_written_differently():
    logits, labels = sampled(500, 5, 1.7, seed=0)
    p = softmax(logits, axis=1)
    assert expected_calibration_error(p, labels) == pytest.approx(reference_ece(p, labels), abs=1e-12)
    brier = np.mean([sum((p[i, c] - (c == labels[i])) ** 2 for c in range(5)) for i in range(len(p))])
    assert brier_score(p, labels) == pytest.approx(brier, abs=1e-12)
    nll = -np.mean(log_softmax(logits, axis=1)[np.arange(len(p)), labels])
    assert negative_log_likelihood(p, labels) == pytest.approx(nll, abs=1e-9)


def test_a_perfectly_calibrated_predictor_has_no_calibration_error_and_a_certain_wrong_one_all():
    # every answer right at confidence 1: ECE 0; every answer wrong at confidence 1: ECE 1
    p = np.eye(4)[[0, 1, 2, 3, 0, 1]]
    assert expected_calibration_error(p, np.array([0, 1, 2, 3, 0, 1])) == 0.0
    assert expected_calibration_error(p, np.array([1, 2, 3, 0, 1, 2])) == 1.0


def test_temperature_fit_recovers_a_known_temperature_and_matches_scipy():
    logits, labels = sampled(20000, 4, 2.5, seed=1)
    fitted = fit_temperature(logits, labels)
    assert fitted == pytest.approx(2.5, rel=0.05)

    def nll(log_t: float) -> float:
        return -np.mean(log_softmax(logits / math.exp(log_t), axis=1)[np.arange(len(labels)), labels])

    reference = math.exp(minimize_scalar(nll, bounds=(-3, 3), method="bounded", options={"xatol": 1e-8}).x)
    assert fitted == pytest.approx(reference, rel=1e-4)


@pytest.mark.parametrize("temperature", [0.5, 2.0, 3.0])
def test_calibration_lowers_ece_on_held_out_data(temperature):
    valid_logits, valid_labels = sampled(3000, 6, temperature, seed=2)
    test_logits, test_labels = sampled(3000, 6, temperature, seed=3)
    record = calibration_record(valid_logits, valid_labels, test_logits, test_labels)
    assert record["ECE_after"] <= record["ECE_before"]
    assert record["NLL_after"] <= record["NLL_before"]
    assert record["ECE_after"] < 0.03
    # the record's figures are the metrics of the scaled probabilities
    after = scaled_probabilities(test_logits, record["temperature"])
    assert record["ECE_after"] == pytest.approx(expected_calibration_error(after, test_labels))
    assert sum(record["reliability_after"]["count"]) == len(test_labels)
    assert len(record["valid_confidence"]) == len(valid_labels)


def test_temperature_never_changes_the_decision():
    logits, _ = sampled(200, 5, 1.0, seed=4)
    for t in (0.3, 1.0, 4.0):
        assert (scaled_probabilities(logits, t).argmax(axis=1) == logits.argmax(axis=1)).all()


def test_threshold_table_pools_folds_as_one_set_and_reaches_its_target():
    a_logits, a_labels = sampled(400, 4, 1.0, seed=5)
    b_logits, b_labels = sampled(300, 4, 1.0, seed=6)
    pa, pb = softmax(a_logits, axis=1), softmax(b_logits, axis=1)
    pooled = threshold_table([coverage_counts(pa, a_labels), coverage_counts(pb, b_labels)])
    whole = threshold_table([coverage_counts(np.vstack([pa, pb]), np.concatenate([a_labels, b_labels]))])
    assert pooled == whole
    p, y = np.vstack([pa, pb]), np.concatenate([a_labels, b_labels])
    for row in pooled:
        if row["min_confidence"] is None:
            continue
        kept = p.max(axis=1) >= row["min_confidence"]
        assert row["kept_share"] == pytest.approx(kept.mean())
        assert (p[kept].argmax(axis=1) == y[kept]).mean() >= row["target_accuracy"]
        lower = [t for t in THRESHOLD_GRID if t < row["min_confidence"]]
        if lower:  # the threshold just below misses the target: the table gives the smallest
            below = p.max(axis=1) >= lower[-1]
            assert (p[below].argmax(axis=1) == y[below]).mean() < row["target_accuracy"]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(0.001, 1.0), min_size=2, max_size=6),
    st.floats(0.0, 1.0),
    st.floats(0.0, 1.0),
)
def test_uncertain_never_at_zero_and_monotone_in_the_threshold(weights, p_low, p_high):
    p = np.asarray(weights) / np.sum(weights)
    labels = [f"c{i}" for i in range(len(p))]
    p_low, p_high = sorted((p_low, p_high))
    at_zero, low, high = decision(p, labels, 0.0), decision(p, labels, p_low), decision(p, labels, p_high)
    assert at_zero["label"] != UNCERTAIN
    assert low["label"] != UNCERTAIN or high["label"] == UNCERTAIN  # uncertain at P stays so above P
    assert high["probabilities"] == at_zero["probabilities"]  # the probabilities stay in the record
    assert high["confidence"] == pytest.approx(p.max())
    assert (high["label"] == UNCERTAIN) == (p.max() < p_high)


def test_release_takes_the_median_temperature_and_says_where_it_came_from():
    results = {
        k: {"calibration": {"temperature": t, "valid_confidence": [0.5]}}
        for k, t in enumerate([1.2, 0.8, 2.0])
    }
    release = release_temperature({**results, 3: {}})
    assert release["temperature"] == 1.2 and release["folds"] == [0, 1, 2]
    assert release["reference_confidence"] == [0.5, 0.5, 0.5]
    none = release_temperature({})
    assert none["temperature"] == 1.0 and "uncalibrated" in none["source"]


def test_a_release_finds_the_folds_beside_it_and_those_handed_to_it(tmp_path):
    """Fold folders beside the release's (`ser train --fold -1` after the folds) and the results a
    train flow hands over in its folder (folds that ran on other machines) count alike; an
    unfinished fold folder (no result.json) and other folders do not."""
    import json

    from ser_model.calibration import fold_results_beside
    from ser_model.launch import FOLD_RESULTS_FILE, RESULT_FILE

    release = tmp_path / "release"
    release.mkdir()
    assert fold_results_beside(release) == {}
    for name, temperature in (("fold-0", 1.5), ("fold-1", None), ("fold-x", 9.0)):
        (tmp_path / name).mkdir()
        if temperature is not None:
            (tmp_path / name / RESULT_FILE).write_text(
                json.dumps({"calibration": {"temperature": temperature}})
            )
    handed = {"2": {"calibration": {"temperature": 2.5}}, "3": {"calibration": {"temperature": 0.5}}}
    (release / FOLD_RESULTS_FILE).write_text(json.dumps(handed))
    found = fold_results_beside(release)
    assert {k: r["calibration"]["temperature"] for k, r in found.items()} == {0: 1.5, 2: 2.5, 3: 0.5}
    assert release_temperature(found)["temperature"] == 1.5 and release_temperature(found)["folds"] == [
        0,
        2,
        3,
    ]


def test_model_folder_calibration_round_trips_and_refuses_a_bad_file(tmp_path):
    assert read_calibration(tmp_path)["temperature"] == 1.0
    write_calibration(tmp_path, {"temperature": 1.5, "source": "test"})
    assert read_calibration(tmp_path)["temperature"] == 1.5
    (tmp_path / CALIBRATION_FILE).write_text(json.dumps({"temperature": -1}))
    with pytest.raises(ValueError, match=CALIBRATION_FILE):
        read_calibration(tmp_path)


def test_binned_error_of_one_table_is_the_ece_and_of_pooled_tables_the_ece_of_all_answers():
    """ECE from a reliability table equals `expected_calibration_error` of its probabilities; pooled
    over folds it equals the ECE of the folds' answers concatenated."""
    p1, y1 = sampled(300, 8, 1.7, seed=3)
    p2, y2 = sampled(180, 8, 0.8, seed=4)
    assert binned_calibration_error(reliability_bins(p1, y1)) == pytest.approx(
        expected_calibration_error(p1, y1)
    )
    pooled = pooled_reliability([reliability_bins(p1, y1), reliability_bins(p2, y2)])
    assert binned_calibration_error(pooled) == pytest.approx(
        expected_calibration_error(np.concatenate([p1, p2]), np.concatenate([y1, y2]))
    )


def test_calibration_error_floor_is_the_mean_ece_of_a_perfectly_calibrated_model():
    """The floor (a binomial expectation per bin, in closed form) against a Monte Carlo reference:
    labels drawn from the model's own probabilities (perfect calibration, a second draw per
    repetition) and the mean ECE over 400 repetitions. Confidences equal within each bin make the
    binomial exact; it shrinks with the sample size roughly as 1/√n."""
    from scipy.stats import binom

    rng = np.random.default_rng(0)
    for n in (240, 1200):
        levels = np.array([0.3, 0.45, 0.62, 0.81, 0.95])
        top = levels[rng.integers(0, len(levels), n)]
        rest = (1.0 - top)[:, None] / 7.0
        probabilities = np.concatenate([top[:, None], np.repeat(rest, 7, axis=1)], axis=1)
        draws = []
        for _ in range(400):
            correct = rng.random(n) < top
            labels = np.where(correct, 0, 1 + rng.integers(0, 7, n))
            draws.append(expected_calibration_error(probabilities, labels))
        table = reliability_bins(probabilities, np.zeros(n, dtype=int))
        floor = calibration_error_floor(table)
        assert floor == pytest.approx(np.mean(draws), rel=0.06)
        reference = sum(
            count / n * sum(binom.pmf(k, count, c) * abs(k / count - c) for k in range(count + 1))
            for count, c in zip(table["count"], table["confidence"])
            if count
        )
        assert floor == pytest.approx(reference, rel=1e-9)
    assert calibration_error_floor(reliability_bins(probabilities[:240], np.zeros(240, dtype=int))) > floor


def test_calibration_error_floor_of_certain_or_empty_bins_is_zero():
    """Answers at confidence 1 (or an empty table) can show no sampling error."""
    certain = np.eye(4)[[0, 1, 2, 3]]
    assert calibration_error_floor(reliability_bins(certain, np.array([0, 1, 2, 3]))) == 0.0
    empty = {"count": [0] * 15, "confidence": [0.0] * 15}
    assert calibration_error_floor(empty) == 0.0
