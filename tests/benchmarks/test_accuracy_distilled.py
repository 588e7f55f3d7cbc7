"""benchmarks/accuracy.py's `distilled` variant: its teachers are the fold's finished `full` runs of
seeds 0 and 1 (none until both have result.json and best/), the teacher's record holds the two-seed
ensemble's test UA against a reference computed here from each model's Predictor probabilities, and
the summary sets student, ensemble and single model side by side with the paired differences."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from ser_model.audio import load_audio
from ser_model.data import audio_files
from ser_model.inference import Predictor
from ser_model.model import SERModel
from ser_model.train import training_splits
from tests.benchmarks.test_accuracy_summary import TABLE_META
from tests.fixtures.scripts import load_script
from tests.train.synthetic import tiny_config, write_synthetic_corpus


@pytest.fixture(scope="module")
def accuracy():
    return load_script("benchmarks/accuracy.py", "bench_accuracy")


def finished_run(out, variant, seed, fold, ua, teacher_ua=None):
    run = out / variant / f"seed-{seed}" / f"fold-{fold}"
    run.mkdir(parents=True)
    result = {
        "fold": fold,
        "selected_epoch": 1,
        "selection_rule": "rule",
        "valid": {"UA": 0.5},
        "test": {"WA": ua, "UA": ua, "macro_f1": ua},
        "epochs": 1,
    }
    if teacher_ua is not None:
        result["distillation"] = {"alpha": 0.5, "temperature": 2.0, "teacher_test": {"UA": teacher_ua}}
    (run / "result.json").write_text(json.dumps(result))
    (run / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "seconds": 1.0}) + "\n")
    return run


def test_a_folds_teachers_exist_only_once_both_full_seeds_have_finished_with_their_model(tmp_path, accuracy):
    assert accuracy.teacher_runs(tmp_path, 2) is None
    first = finished_run(tmp_path, "full", 0, 2, 0.6)
    (first / "best").mkdir()
    second = finished_run(tmp_path, "full", 1, 2, 0.5)
    assert accuracy.teacher_runs(tmp_path, 2) is None, "seed 1 kept no best/ yet"
    (second / "best").mkdir()
    assert accuracy.teacher_runs(tmp_path, 2) == [first, second]
    assert accuracy.teacher_runs(tmp_path, 3) is None, "another fold's runs teach nothing here"


def test_the_teacher_records_the_two_seed_ensembles_test_scores(tmp_path, accuracy):
    root = tmp_path / "audio"
    manifest, folds = write_synthetic_corpus(root)
    runs = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        run = tmp_path / "grid" / "full" / f"seed-{seed}" / "fold-0"
        SERModel(tiny_config(seed=seed)).eval().save_pretrained(run / "best")
        runs.append(run)
    rows = training_splits(manifest, folds, 0)["test"]
    teacher = accuracy.fold_teacher(runs, rows, root)

    files = audio_files(root, rows["path"].tolist(), rows["utt_id"].tolist())
    waves = [load_audio(f, 16000) for f in files]
    mean = np.mean(
        [Predictor(SERModel.from_pretrained(r / "best")).probabilities(waves) for r in runs], axis=0
    )
    labels = list(tiny_config().labels)
    y = np.array([labels.index(label) for label in rows["label"]])
    recall = [float(np.mean(mean.argmax(1)[y == c] == c)) for c in range(len(labels)) if (y == c).any()]
    assert teacher.record["teacher_test"]["UA"] == pytest.approx(float(np.mean(recall)))
    assert [m["seed"] for m in teacher.record["members"]] == [0, 1]
    assert len(teacher.model.members) == 2


def test_the_summary_sets_the_student_beside_its_ensemble_and_the_single_model(tmp_path, accuracy):
    student = {(0, 0): 0.60, (0, 1): 0.55, (1, 0): 0.58}
    ensemble = {(0, 0): 0.62, (0, 1): 0.54, (1, 0): 0.62}
    single = {(0, 0): 0.57, (0, 1): 0.52, (1, 0): 0.59, (1, 1): 0.50}
    for (seed, fold), ua in single.items():
        finished_run(tmp_path, "full", seed, fold, ua)
    for (seed, fold), ua in student.items():
        finished_run(tmp_path, "distilled", seed, fold, ua, teacher_ua=ensemble[(seed, fold)])
    finished_run(tmp_path, "distilled", 1, 1, 0.40)  # no teacher record: left out of the comparison
    summary = accuracy.summarise(accuracy.collect(tmp_path))
    against = summary["distilled"]["against_teacher"]
    keys = sorted(student)
    assert against["runs"] == [list(k) for k in keys]
    assert against["student_UA"] == pytest.approx(100 * sum(student.values()) / 3)
    assert against["ensemble_UA"] == pytest.approx(100 * sum(ensemble.values()) / 3)
    assert against["single_UA"] == pytest.approx(100 * sum(single[k] for k in keys) / 3)
    d = [100 * (student[k] - ensemble[k]) for k in keys]  # −2, +1, −4
    mean = sum(d) / 3
    se = math.sqrt(sum((x - mean) ** 2 for x in d) / 2) / math.sqrt(3)
    paired = against["student_minus_ensemble_UA"]
    assert (paired["n"], paired["ahead"], paired["behind"]) == (3, 1, 2)
    assert paired["mean"] == pytest.approx(mean) and paired["se"] == pytest.approx(se)
    assert against["student_minus_single_UA"]["mean"] == pytest.approx(
        100 * sum(student[k] - single[k] for k in keys) / 3
    )
    row = next(
        line for line in accuracy.markdown(summary, TABLE_META).splitlines() if line.startswith("| 3 |")
    )
    assert row.startswith(
        f"| 3 | {100 * sum(student.values()) / 3:.1f} | {100 * sum(ensemble.values()) / 3:.1f} |"
    )
    assert f"{mean:+.1f} ± {se:.1f} (n=3, 1 ahead, 2 behind)" in row
    assert "against_teacher" not in accuracy.summarise(accuracy.collect(tmp_path / "none"))
