"""The calibration step of fit and the model card it writes (ser_model/calibration.py,
ser_model/model_card.py): a trained fold's folder holds its temperature and a card whose figures are
those of its result.json; a release takes the folds' median temperature and their threshold table."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from ser_model.calibration import CALIBRATION_FILE, calibration_error_floor, threshold_table
from ser_model.inference import Predictor
from ser_model.launch import RELEASE_FOLD
from ser_model.model_card import MODEL_CARD_FILE, model_card
from ser_model.train import fit
from tests.train.synthetic import tiny_config


def card_numbers(text: str) -> set[str]:
    return set(re.findall(r"\d+\.\d{4}", text))


@pytest.fixture(scope="module")
def trained(synthetic_corpus, tmp_path_factory):
    """Folds 0 and 1 of the synthetic corpus (2 epochs) and the release beside them."""
    root, manifest, folds = synthetic_corpus
    runs = tmp_path_factory.mktemp("runs")
    config = tiny_config(epochs=2)
    for fold in (0, 1):
        fit(config, manifest, folds, fold, root, runs / f"fold-{fold}", resume=False)
    fit(config, manifest, folds, RELEASE_FOLD, root, runs / "release", resume=False)
    return runs


def test_a_fold_records_its_calibration_and_its_card_gives_the_recorded_figures(trained):
    result = json.loads((trained / "fold-0" / "result.json").read_text())
    calibration = result["calibration"]
    assert calibration["temperature"] > 0
    assert {"ECE_before", "ECE_after", "brier_before", "brier_after", "NLL_before", "NLL_after"} <= set(
        calibration
    )
    stored = json.loads((trained / "fold-0" / "best" / CALIBRATION_FILE).read_text())
    assert stored["temperature"] == calibration["temperature"]
    assert Predictor.from_pretrained(trained / "fold-0" / "best").temperature == calibration["temperature"]

    card = (trained / "fold-0" / "best" / MODEL_CARD_FILE).read_text()
    assert card == model_card(
        result,
        json.loads((trained / "fold-0" / "best" / "config.json").read_text()),
        title=card.splitlines()[0].removeprefix("# Model card: "),
    )
    numbers = card_numbers(card)
    test = result["test"]
    for value in (
        test["WA"],
        test["UA"],
        test["macro_f1"],
        calibration["temperature"],
        calibration["ECE_before"],
        calibration["ECE_after"],
    ):
        assert f"{value:.4f}" in numbers
    floor = calibration_error_floor(calibration["reliability_after"])
    assert f"ECE's floor at this sample size (what a perfectly calibrated model reads): {floor:.4f}" in card
    for label, recall in test["per_class_recall"].items():
        assert f"| {label} | {recall:.4f} |" in card
    for label, row in zip(test["labels"], test["confusion"]):
        assert f"| {label} | {' | '.join(map(str, row))} |" in card
    assert result["data"]["fingerprint"] in card
    assert result["code_version"]["ser.git_commit"] in card
    assert "Licence of the training data" in card


def test_the_release_takes_the_folds_median_temperature_and_their_threshold_table(trained):
    folds = {k: json.loads((trained / f"fold-{k}" / "result.json").read_text()) for k in (0, 1)}
    release = json.loads((trained / "release" / "result.json").read_text())
    expected = float(np.median([r["calibration"]["temperature"] for r in folds.values()]))
    assert release["calibration"]["temperature"] == pytest.approx(expected)
    assert release["calibration"]["folds"] == [0, 1]
    card = (trained / "release" / "best" / MODEL_CARD_FILE).read_text()
    table = threshold_table([r["calibration"]["coverage"] for r in folds.values()])
    for row in table:
        if row["min_confidence"] is not None:
            assert (
                f"| {row['target_accuracy']:.4f} | {row['min_confidence']:.4f} | {row['accuracy']:.4f} | {row['kept_share']:.4f} |"
                in card
            )
    for r in folds.values():
        assert f"{r['test']['UA']:.4f}" in card


def test_a_user_dataset_is_stated_as_of_unknown_licence_and_ravdess_as_non_commercial():
    base = {"test": {}, "selection_rule": "rule", "calibration": {"temperature": 1.0}}
    unknown = model_card(
        {**base, "data": {"corpus": "calls", "licence": "unknown: supplied by the user"}},
        {"labels": ["a", "b"]},
    )
    assert "unknown: supplied by the user" in unknown and "non-commercial" not in unknown
    ravdess = model_card(
        {**base, "data": {"corpus": "ravdess", "licence": "CC BY-NC-SA 4.0"}}, {"labels": ["a", "b"]}
    )
    assert "**non-commercial**" in ravdess
