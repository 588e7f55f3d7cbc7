"""The registered version of a release: its description is the model card (then the promotion
decision, never cut, within the registry's limit), its tag holds the threshold table of the folds'
test speakers (compared with a threshold search written here over the raw probabilities)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from data_contracts.labels import LABELS
from flows.promote import PROMOTION_HEADING, promote_version, register_release
from flows.registry import CARD_CUT, MAX_DESCRIPTION, version_description
from flows.release import release_card, threshold_tags
from ser_model.calibration import TARGET_ACCURACIES, THRESHOLD_GRID, calibration_record, release_temperature
from ser_model.metrics import fold_summary
from ser_model.presets import experiment_config
from ser_stack.names import (
    CORPUS_TAG,
    FINGERPRINT_TAG,
    GIT_COMMIT_TAG,
    PROTOCOL_TAG,
    SELECTION_TAG,
    THRESHOLDS_TAG,
)

LABELS_R = LABELS["ravdess"]
SPEAKERS = {k: [f"Actor_{4 * k + i:02d}" for i in range(1, 5)] for k in range(2)}


@settings(max_examples=60, deadline=None)
@given(card=st.text(min_size=0, max_size=7000), decision=st.text(min_size=1, max_size=1500))
def test_a_description_fits_the_registry_and_keeps_the_whole_decision(card, decision):
    text = version_description(card, decision)
    assert len(text) <= MAX_DESCRIPTION
    assert decision.strip() in text
    if len(card.strip()) + len(decision.strip()) + 3 <= MAX_DESCRIPTION:
        assert card.strip() in text and CARD_CUT not in text


def fold_outcome(fold: int, rng: np.random.Generator) -> tuple[dict, np.ndarray, np.ndarray]:
    """A fold's outcome whose calibration comes from synthetic logits; with its test probabilities
    (T = 1 here: what the coverage counts are of, after calibration) and labels."""
    c = len(LABELS_R)
    labels = rng.integers(0, c, 400)
    logits = rng.normal(0, 1, (400, c)) + 2.5 * np.eye(c)[labels] * rng.uniform(0, 2, (400, 1))
    record = calibration_record(logits[:200], labels[:200], logits[200:], labels[200:])
    z = logits[200:] / record["temperature"]
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    ua = float(np.mean(p.argmax(axis=1) == labels[200:]))
    result = {
        "test": {"WA": ua, "UA": ua, "macro_f1": ua},
        "speakers": {"test": SPEAKERS[fold]},
        "calibration": record,
    }
    return {"fold": fold, "result": result}, p, labels[200:]


def reference_thresholds(probabilities: list[np.ndarray], labels: list[np.ndarray]) -> list[dict]:
    """Per target: the first grid threshold whose kept answers (confidence >= P), pooled, reach it."""
    p, y = np.concatenate(probabilities), np.concatenate(labels)
    rows = []
    for target in TARGET_ACCURACIES:
        row = {"target_accuracy": target, "min_confidence": None, "accuracy": None, "kept_share": 0.0}
        for threshold in THRESHOLD_GRID:
            kept = p.max(axis=1) >= threshold
            if kept.any() and np.mean(p[kept].argmax(axis=1) == y[kept]) >= target:
                accuracy = float(np.mean(p[kept].argmax(axis=1) == y[kept]))
                row = {**row, "min_confidence": threshold, "accuracy": accuracy, "kept_share": kept.mean()}
                break
        rows.append(row)
    return rows


def test_the_version_carries_its_card_and_threshold_table_and_promotion_writes_after_the_card(
    local_mlflow, experiment_id
):
    rng = np.random.default_rng(0)
    made = [fold_outcome(k, rng) for k in (0, 1)]
    folds = [outcome for outcome, _, _ in made]
    release = {
        "fold": -1,
        "result": {
            "test": {},
            "selection_rule": "last epoch on every speaker",
            "calibration": release_temperature({o["fold"]: o["result"] for o in folds}),
            "data": {"corpus": "ravdess", "licence": "CC BY-NC-SA 4.0"},
        },
    }
    config = experiment_config("ravdess", "cpu-fbank")
    card = release_card("ravdess", release, folds, config, {"preset": "cpu-fbank", "overrides": {}})
    tags = {CORPUS_TAG: "ravdess", FINGERPRINT_TAG: "a" * 64, PROTOCOL_TAG: "p", SELECTION_TAG: "s"}
    parent = local_mlflow.create_run(experiment_id, tags=tags | {GIT_COMMIT_TAG: "abc"}).info.run_id
    fold_table = pd.DataFrame(
        [{"fold": k, "role": "test", "speaker": s} for k, speakers in SPEAKERS.items() for s in speakers]
    )
    uas = {o["fold"]: o["result"]["test"]["UA"] for o in folds}
    summary = fold_summary({o["fold"]: o["result"]["test"] for o in folds})
    version, _ = register_release(
        local_mlflow,
        parent,
        "s3://x/no-model",
        uas,
        fold_table,
        summary,
        LABELS_R,
        card,
        threshold_tags(folds),
    )

    stored = local_mlflow.get_model_version("ser-ravdess", version)
    assert stored.description.strip() == card.strip()
    table = json.loads(stored.tags[THRESHOLDS_TAG])
    expected = reference_thresholds([p for _, p, _ in made], [y for _, _, y in made])
    assert [r["min_confidence"] for r in table] == [r["min_confidence"] for r in expected]
    assert any(r["min_confidence"] is not None for r in expected), "some target must be reached"
    for row, reference in zip(table, expected):
        if reference["min_confidence"] is not None:
            assert row["accuracy"] == pytest.approx(reference["accuracy"])
            assert row["kept_share"] == pytest.approx(reference["kept_share"])
            assert (
                f"| {row['min_confidence']:.4f} | {row['accuracy']:.4f} | {row['kept_share']:.4f} |" in card
            )
    assert f"{release['result']['calibration']['temperature']:.4f}" in card and "**non-commercial**" in card

    for _ in range(2):  # a second decision replaces the first, the card stays once
        promote_version(local_mlflow, "ravdess", version)
        described = local_mlflow.get_model_version("ser-ravdess", version).description
        assert described.startswith(card.strip()) and described.count(PROMOTION_HEADING) == 1
