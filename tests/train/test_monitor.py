"""The champion watched on new data without servers: new rows by content, scores, drift, the flag,
and `ser monitor` on two `ser ingest` folders."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
import soundfile as sf
import torch
from scipy import stats

from data_contracts.ingest import run_ingest
from data_contracts.labels import LABELS
from ser_model.cli import main
from ser_model.ensemble import SEREnsemble, load_model
from ser_model.evaluation import evaluate_rows
from ser_model.model import SERModel
from ser_model.monitor import MonitorResult, unseen_rows, watch_champion
from tests.fixtures.champions import tiny_ravdess_checkpoint
from tests.fixtures.corpora import make_ravdess, ravdess_name

RENAMED = ("Actor_01/03-01-01-01-01-01-01.wav", f"Actor_01/{ravdess_name(1, 1, 1, 2, 2)}.wav")
"""A file of the first root, moved to a name no file had: same content, new path and utt_id."""


def reference_total_variation(a, b) -> float:
    ca, cb = Counter(map(str, a)), Counter(map(str, b))
    return 0.5 * sum(abs(ca[c] / len(a) - cb[c] / len(b)) for c in set(ca) | set(cb))


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> tuple[Path, Path]:
    """Actors 01–08 (what the champion trained on); then the same root with one file renamed and
    a new actor 09 whose recordings are 20 dB quieter."""
    base = tmp_path_factory.mktemp("monitor")
    before, after = base / "before", base / "after"
    make_ravdess(before, actors=range(1, 9), per_actor=4)
    shutil.copytree(before, after)
    (after / RENAMED[0]).rename(after / RENAMED[1])
    make_ravdess(after, actors=[9], per_actor=4)
    for path in (after / "Actor_09").iterdir():
        audio, rate = sf.read(path, dtype="float32")
        sf.write(path, audio * 0.1, rate, subtype="PCM_16")
    return before, after


@pytest.fixture(scope="module")
def ingested(roots):
    return tuple(run_ingest("ravdess", str(root), progress=False) for root in roots)


@pytest.fixture(scope="module")
def champion_folder(tmp_path_factory) -> Path:
    return tiny_ravdess_checkpoint(tmp_path_factory.mktemp("champion") / "best")


def test_a_renamed_copy_of_a_seen_file_is_not_new(ingested):
    before, after = ingested
    renamed = after.manifest.loc[after.manifest["path"] == RENAMED[1]]
    assert len(renamed) == 1 and RENAMED[1] not in set(before.manifest["path"])
    new = unseen_rows(after.manifest, before.manifest)
    assert set(new["path"].str.split("/").str[0]) == {"Actor_09"}
    assert len(new) == 4 and RENAMED[1] not in set(new["path"])
    assert unseen_rows(before.manifest, before.manifest).empty


def test_watch_champion_scores_the_new_rows_and_measures_drift(ingested, roots, champion_folder):
    before, after = ingested
    model = SERModel.from_pretrained(champion_folder)
    result = watch_champion(
        model,
        after.manifest,
        roots[1],
        before.manifest,
        before.folds,
        roots[0],
        champion_ua_mean=0.9,
        margin=0.1,
    )
    new = unseen_rows(after.manifest, before.manifest)
    assert (result.new_rows, result.seen_rows) == (4, len(after.manifest) - 4)
    confusion = result.metrics["confusion"]
    truth = Counter(new["label"])
    assert [sum(row) for row in confusion] == [truth[label] for label in LABELS["ravdess"]]
    assert result.drift["speaker"] == 1.0  # every new row is from a speaker the champion never heard
    assert result.drift["sample_rate"] == 0.0 and result.drift["channels"] == 0.0
    assert result.drift["loudness_dbfs"] == 1.0  # every new file is quieter than every seen one
    assert result.drift["duration_s"] == pytest.approx(
        stats.ks_2samp(before.manifest["duration_s"], new["duration_s"]).statistic
    )
    assert result.drift["label"] == pytest.approx(
        reference_total_variation(before.manifest["label"], new["label"])
    )
    reference_predictions, new_predictions = result.samples["predicted_class"]
    assert len(new_predictions) == 4 and 0.0 <= result.drift["predicted_class"] <= 1.0
    assert len(reference_predictions) == len(
        before.manifest[
            before.manifest["speaker"].isin(before.folds.query("fold == 0 and role == 'valid'")["speaker"])
        ]
    )
    assert result.degraded == (0.9 - result.metrics["UA"] > 0.1)
    flat = result.flat_metrics()
    assert flat["new_rows"] == 4 and flat["UA"] == result.metrics["UA"] and flat["champion_UA_mean"] == 0.9


def test_a_champion_trained_on_every_speaker_has_no_validation_rows_to_compare(
    ingested, roots, champion_folder
):
    before, after = ingested
    model = SERModel.from_pretrained(champion_folder)
    model.config = model.config.with_overrides({"train.release_holdout": False})
    result = watch_champion(model, after.manifest, roots[1], before.manifest, before.folds, roots[0])
    assert result.new_rows == 4 and result.metrics["n"] == 4
    assert "predicted_class" not in result.samples and "predicted_class" not in result.drift
    assert result.drift["speaker"] == 1.0, "the other drift features are still measured"


def test_the_flag_is_raised_only_beyond_the_margin():
    def result(ua, fold_mean, margin=0.1):
        metrics = {"UA": ua, "WA": ua, "macro_f1": ua, "per_class_recall": {"a": ua}, "confusion": [[1]]}
        return MonitorResult(("a",), 10, 0, metrics, fold_mean, margin)

    assert result(0.35, 0.5).degraded and "DEGRADED" in result(0.35, 0.5).report_lines()[0]
    assert not result(0.45, 0.5).degraded
    assert not result(0.1, None).degraded and "not known" in result(0.1, None).verdict()
    assert result(0.45, 0.5, margin=0.0).degraded
    nothing = MonitorResult(("a",), 0, 12, None, 0.5, 0.1)
    assert not nothing.degraded and nothing.verdict().startswith("no new rows")
    assert nothing.flat_metrics() == {"new_rows": 0.0, "seen_rows": 12.0, "champion_UA_mean": 0.5}


def test_ser_monitor_prints_a_report_from_two_ingest_folders(roots, champion_folder, tmp_path, capsys):
    outs = []
    for root, name in zip(roots, ("before", "after")):
        assert main(["ingest", "ravdess", str(root), "--out", str(tmp_path / name), "--no-progress"]) == 0
        outs.append(str(tmp_path / name))
    capsys.readouterr()
    argv = ["monitor", "--model", str(champion_folder), "--manifest", outs[1], "--reference", outs[0]]
    assert main([*argv, "--fold-mean-ua", "1.0", "--json", str(tmp_path / "report.json")]) == 0
    printed = capsys.readouterr().out
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["new_rows"] == 4 and 0.0 <= report["UA"] <= 1.0 and report["drift.speaker"] == 1.0
    assert report["degraded"] == (1.0 - report["UA"] > 0.1)
    assert ("DEGRADED" in printed) == report["degraded"] and "drift loudness_dbfs: KS 1.0000" in printed
    assert main([*argv[:-1], outs[1]]) == 0
    assert "no new rows" in capsys.readouterr().out
    assert main([*argv[:-1], str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err


def test_ser_monitor_scores_an_ensemble_champion_by_its_mean_probability(roots, ingested, tmp_path):
    """A champion released as a seed ensemble (``train.release_seeds``) is watched as the ensemble,
    through ``ser monitor --model FOLDER``: member 1 is made confident (its classifier scaled by
    100, near one-hot probabilities), so the mean probability follows member 1 where member 0, had
    it been read alone, predicts another class."""
    before, after = ingested
    members = [
        SERModel.from_pretrained(tiny_ravdess_checkpoint(tmp_path / f"m{seed}", seed=seed)) for seed in (0, 1)
    ]
    with torch.no_grad():
        members[1].classifier.weight.mul_(100.0)
        members[1].classifier.bias.mul_(100.0)
    ensemble = SEREnsemble(members, members[0].config.with_overrides({"train.release_holdout": False}))
    folder = ensemble.save_pretrained(tmp_path / "ensemble")
    new = unseen_rows(after.manifest, before.manifest)
    confusion = [evaluate_rows(m.eval(), new, roots[1])["confusion"] for m in members]
    assert confusion[0] != confusion[1], "the two members must disagree for this test to tell them apart"
    outs = []
    for root, name in zip(roots, ("before", "after")):
        assert main(["ingest", "ravdess", str(root), "--out", str(tmp_path / name), "--no-progress"]) == 0
        outs.append(str(tmp_path / name))
    argv = ["monitor", "--model", str(folder), "--manifest", outs[1], "--reference", outs[0]]
    assert main([*argv, "--json", str(tmp_path / "report.json")]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["new_rows"] == 4 and "drift.predicted_class" not in report, (
        "an ensemble trained on every speaker has no validation rows to compare predictions with"
    )
    result = watch_champion(
        load_model(folder), after.manifest, roots[1], before.manifest, before.folds, roots[0]
    )
    assert result.metrics["confusion"] == confusion[1]
    assert report["UA"] == pytest.approx(result.metrics["UA"])


def softmax_top(logits, temperature: float) -> list[float]:
    z = torch.as_tensor(logits, dtype=torch.float64) / temperature
    e = torch.exp(z - z.max(dim=1, keepdim=True).values)
    return (e / e.sum(dim=1, keepdim=True)).max(dim=1).values.tolist()


def test_the_champion_calibrated_confidence_on_new_rows_is_compared_with_its_validation_rows(
    ingested, roots, champion_folder
):
    from ser_model.evaluation import rows_logits

    before, after = ingested
    model = SERModel.from_pretrained(champion_folder)
    result = watch_champion(
        model,
        after.manifest,
        roots[1],
        before.manifest,
        before.folds,
        roots[0],
        calibration={"temperature": 2.5, "reference_confidence": [0.99]},
    )
    new = unseen_rows(after.manifest, before.manifest)
    valid_speakers = before.folds.query("fold == 0 and role == 'valid'")["speaker"]
    valid = before.manifest[before.manifest["speaker"].isin(valid_speakers)]
    expected_new = softmax_top(rows_logits(model, new, roots[1])[0], 2.5)
    expected_valid = softmax_top(rows_logits(model, valid, roots[0])[0], 2.5)
    reference, on_new = result.samples["calibrated_confidence"]
    assert on_new == pytest.approx(expected_new) and reference == pytest.approx(expected_valid)
    assert result.drift["calibrated_confidence"] == pytest.approx(
        stats.ks_2samp(expected_valid, expected_new).statistic
    )
    assert any("calibrated_confidence: KS" in line for line in result.report_lines())

    model.config = model.config.with_overrides({"train.release_holdout": False})
    recorded = [0.3, 0.5, 0.9]
    without_valid = watch_champion(
        model,
        after.manifest,
        roots[1],
        before.manifest,
        before.folds,
        roots[0],
        calibration={"temperature": 2.5, "reference_confidence": recorded},
    )
    assert without_valid.samples["calibrated_confidence"][0] == recorded, "the folder's record stands in"
    bare = watch_champion(model, after.manifest, roots[1], before.manifest, before.folds, roots[0])
    assert "calibrated_confidence" not in bare.drift, "nothing to compare with: left out"
