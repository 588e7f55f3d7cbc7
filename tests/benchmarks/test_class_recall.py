"""benchmarks/class_recall.py and its place in benchmarks/accuracy.py's summary: each class's test recall,
mean over a variant's runs, against a reference computed here; the with_pitch variant. No training."""

from __future__ import annotations

import json

import pytest

from ser_model.presets import experiment_config
from tests.benchmarks.test_accuracy_summary import TABLE_META
from tests.fixtures.scripts import load_script

CLASSES = ("neutral", "happy", "sad", "fearful")


@pytest.fixture(scope="module")
def accuracy():
    return load_script("benchmarks/accuracy.py", "bench_accuracy")


@pytest.fixture(scope="module")
def recall():
    return load_script("benchmarks/class_recall.py", "bench_class_recall")


def write_run(out, variant, seed, fold, per_class):
    run = out / variant / f"seed-{seed}" / f"fold-{fold}"
    run.mkdir(parents=True)
    present = [v for v in per_class.values() if v is not None]
    ua = sum(present) / len(present)
    test = {"WA": ua, "UA": ua, "macro_f1": ua, "per_class_recall": per_class}
    result = {
        "fold": fold,
        "selected_epoch": 1,
        "selection_rule": "r",
        "valid": {"UA": ua},
        "test": test,
        "epochs": 1,
    }
    (run / "result.json").write_text(json.dumps(result))
    (run / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "seconds": 1.0}) + "\n")


def test_each_class_is_the_mean_of_the_runs_that_show_it(recall):
    tests = [
        {"per_class_recall": {"neutral": 0.5, "happy": 0.25, "sad": None, "fearful": 1.0}},
        {"per_class_recall": {"neutral": 0.0, "happy": 0.75, "sad": 0.5, "fearful": 0.5}},
        {"UA": 0.3},  # a run that recorded no per-class recall is not counted
    ]
    out = recall.class_recall(tests)
    assert out["runs"] == 2
    assert list(out["mean"]) == list(CLASSES)
    assert out["mean"] == pytest.approx({"neutral": 25.0, "happy": 50.0, "sad": 50.0, "fearful": 75.0})
    assert recall.class_recall([{"UA": 0.3}]) is None
    assert recall.class_recall([{"per_class_recall": {"sad": None}}])["mean"] == {"sad": None}


def test_the_grid_summary_and_table_give_each_variants_class_recall(tmp_path, accuracy):
    runs = {
        "full": [
            {"neutral": 0.5, "happy": 0.5, "sad": 0.25, "fearful": 0.25},
            {"neutral": 0.7, "happy": 0.3, "sad": 0.45, "fearful": 0.05},
        ],
        "with_pitch": [{"neutral": 0.6, "happy": 0.6, "sad": 0.5, "fearful": 0.5}],
    }
    for variant, per_run in runs.items():
        for fold, per_class in enumerate(per_run):
            write_run(tmp_path, variant, 0, fold, per_class)
    summary = accuracy.summarise(accuracy.collect(tmp_path))
    assert summary["full"]["per_class_recall"]["mean"] == pytest.approx(
        {"neutral": 60.0, "happy": 40.0, "sad": 35.0, "fearful": 15.0}
    )
    assert summary["with_pitch"]["per_class_recall"] == {
        "runs": 1,
        "mean": pytest.approx({"neutral": 60.0, "happy": 60.0, "sad": 50.0, "fearful": 50.0}),
    }
    lines = accuracy.markdown(summary, TABLE_META).splitlines()
    header = lines.index("| variant | runs | neutral | happy | sad | fearful |")
    assert lines[header + 2] == "| full | 2 | 60.0 | 40.0 | 35.0 | 15.0 |"
    assert lines[header + 3] == "| with_pitch | 1 | 60.0 | 60.0 | 50.0 | 50.0 |"


def test_the_with_pitch_variant_is_the_preset_with_the_pitch_branch(accuracy):
    assert accuracy.VARIANTS["with_pitch"] == {"model.pitch": True}
    full = experiment_config("ravdess", accuracy.PRESET, overrides=accuracy.VARIANTS["full"])
    with_pitch = experiment_config("ravdess", accuracy.PRESET, overrides=accuracy.VARIANTS["with_pitch"])
    assert with_pitch.model.pitch and not full.model.pitch
    assert with_pitch.with_overrides({"model.pitch": False}) == full
