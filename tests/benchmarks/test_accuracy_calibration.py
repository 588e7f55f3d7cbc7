"""benchmarks/accuracy.py's calibration figures: runs whose result.json holds a calibration block
are summarised per variant (means, std, how many did not get worse, pooled reliability, threshold
table) equal to references computed here from the raw probabilities; runs without one are left out."""

from __future__ import annotations

import json
import statistics

import numpy as np
import pytest

from ser_model.calibration import calibration_record, expected_calibration_error, scaled_probabilities
from tests.benchmarks.test_accuracy_summary import TABLE_META
from tests.fixtures.scripts import load_script


@pytest.fixture(scope="module")
def accuracy():
    return load_script("benchmarks/accuracy.py", "bench_accuracy_calibration")


def synthetic_run(seed: int, overconfidence: float):
    """A calibration block from logits of a model ``overconfidence`` times too sharp, and the test
    side's calibrated probabilities and labels it summarises."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, 600)
    logits = rng.normal(0, 1, (600, 4)) + 1.5 * np.eye(4)[labels]
    record = calibration_record(
        overconfidence * logits[:300], labels[:300], overconfidence * logits[300:], labels[300:]
    )
    return record, scaled_probabilities(overconfidence * logits[300:], record["temperature"]), labels[300:]


def write_run(out, variant, seed, fold, calibration=None):
    run = out / variant / f"seed-{seed}" / f"fold-{fold}"
    run.mkdir(parents=True)
    result = {
        "fold": fold,
        "selected_epoch": 1,
        "selection_rule": "rule",
        "valid": {"UA": 0.5},
        "test": {"WA": 0.5, "UA": 0.5, "macro_f1": 0.5},
        "epochs": 1,
        **({"calibration": calibration} if calibration else {}),
    }
    (run / "result.json").write_text(json.dumps(result))
    (run / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "seconds": 1.0}) + "\n")


def test_the_grid_summarises_the_calibration_blocks_of_its_runs(tmp_path, accuracy):
    made = [synthetic_run(k, sharp) for k, sharp in enumerate((3.0, 2.0, 2.5))]
    for k, (record, _, _) in enumerate(made):
        write_run(tmp_path, "full", 0, k, record)
    write_run(tmp_path, "reference_cnn", 0, 0)  # no calibration block: no calibration figures
    summary = accuracy.summarise(accuracy.collect(tmp_path))
    c = summary["full"]["calibration"]
    records = [r for r, _, _ in made]
    assert c["runs"] == 3 and "calibration" not in summary["reference_cnn"]
    for name in ("temperature", "ECE_before", "ECE_after", "brier_before", "NLL_after"):
        assert c["mean"][name] == pytest.approx(statistics.fmean(r[name] for r in records))
    assert c["ECE_after_std"] == pytest.approx(statistics.stdev(r["ECE_after"] for r in records))
    assert c["ECE_not_worse"] == sum(r["ECE_after"] <= r["ECE_before"] for r in records) == 3, (
        "an over-sharp model's temperature fitted on held-out data of the same model lowers its ECE"
    )
    p = np.concatenate([q for _, q, _ in made])
    y = np.concatenate([t for _, _, t in made])
    confidence, correct = p.max(axis=1), p.argmax(axis=1) == y
    bins = np.clip(np.ceil(confidence * 15).astype(int) - 1, 0, 14)
    assert c["reliability_after"]["count"] == [int((bins == b).sum()) for b in range(15)]
    for b in range(15):
        if (bins == b).any():
            assert c["reliability_after"]["accuracy"][b] == pytest.approx(correct[bins == b].mean())
    assert c["pooled"]["utterances"] == len(y)
    assert c["pooled"]["ECE_after"] == pytest.approx(expected_calibration_error(p, y))
    assert c["pooled"]["ECE_floor_after"] < c["ECE_floor_after"], (
        "the floor falls with the pooled sample size"
    )
    row80 = next(r for r in c["thresholds"] if r["target_accuracy"] == 0.8)
    kept = confidence >= row80["min_confidence"]
    assert correct[kept].mean() >= 0.8 and row80["kept_share"] == pytest.approx(kept.mean())
    below = confidence >= round(row80["min_confidence"] - 0.01, 2)
    assert correct[below].mean() < 0.8, "the smallest such threshold"

    table = accuracy.markdown(summary, TABLE_META)
    line = next(x for x in table.splitlines() if x.startswith("| full | 3 | ") and "of 3" in x)
    assert f"{c['mean']['ECE_after']:.4f} ± {c['ECE_after_std']:.4f}" in line and "3 of 3" in line
    written = accuracy.write_reliability_figures(tmp_path, summary)
    assert [w.name for w in written] == ["reliability_full.png"] and written[0].stat().st_size > 0
