"""benchmarks/accuracy.py's summary: finished runs of every variant and seed under one folder are
merged (whichever process trained them), in VARIANTS order and (seed, fold) order, with mean,
sample std (ser_model.metrics.mean_and_std) and the paired difference against `full` equal to references computed here;
unfinished runs are left out; a run is claimed by one live process at a time. No training."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from tests.fixtures.scripts import load_script

#: what markdown() needs besides the summary, for tests that only read the tables' rows
TABLE_META = {
    "n_utterances": 1,
    "n_actors": 1,
    "selection_rule": "r",
    "preset": "p",
    "overrides": {},
    "machine": "m",
}


@pytest.fixture(scope="module")
def accuracy():
    return load_script("benchmarks/accuracy.py", "bench_accuracy")


def write_run(
    out: Path,
    variant: str,
    seed: int,
    fold: int,
    ua: float,
    seconds: list[float],
    last_ua: float | None = None,
) -> None:
    run = out / variant / f"seed-{seed}" / f"fold-{fold}"
    run.mkdir(parents=True)
    test = {"WA": ua + 0.01, "UA": ua, "macro_f1": ua - 0.01}
    result = {
        "fold": fold,
        "selected_epoch": len(seconds),
        "selection_rule": "rule",
        "valid": {"UA": ua / 2},
        "test": test,
        "epochs": len(seconds),
    }
    if last_ua is not None:
        result["test_last_epoch"] = {"UA": last_ua}
    (run / "result.json").write_text(json.dumps(result))
    (run / "metrics.jsonl").write_text(
        "".join(json.dumps({"epoch": i + 1, "seconds": s}) + "\n" for i, s in enumerate(seconds))
    )


def test_summary_merges_variants_and_seeds_with_reference_statistics(tmp_path, accuracy):
    ua = {
        "reference_cnn": {(0, 0): 0.40, (0, 1): 0.50, (1, 0): 0.45},
        "full": {(1, 0): 0.55, (0, 1): 0.60, (0, 0): 0.50, (0, 10): 0.52},
    }
    for variant, runs in ua.items():
        for (seed, fold), value in runs.items():
            write_run(tmp_path, variant, seed, fold, value, [1.5, 2.5])
    (tmp_path / "with_eam" / "seed-0" / "fold-0").mkdir(parents=True)  # still training: no result.json
    results = accuracy.collect(tmp_path)
    assert list(results) == ["full", "reference_cnn"]  # VARIANTS order
    assert list(results["full"]) == [(0, 0), (0, 1), (0, 10), (1, 0)]
    summary = accuracy.summarise(results)
    for variant, runs in ua.items():
        pct = [100 * runs[k] for k in sorted(runs)]
        mean = sum(pct) / len(pct)
        std = math.sqrt(sum((v - mean) ** 2 for v in pct) / (len(pct) - 1))
        row = summary[variant]
        assert row["UA"]["per_run"] == pytest.approx(pct)
        assert row["UA"]["mean"] == pytest.approx(mean) and row["UA"]["std"] == pytest.approx(std)
        assert row["WA"]["mean"] == pytest.approx(mean + 1) and row["macro_f1"]["mean"] == pytest.approx(
            mean - 1
        )
        assert row["valid_UA_per_run"] == pytest.approx([p / 2 for p in pct])
        assert row["train_seconds_per_run"] == [4.0] * len(runs) and row["selected_epoch_per_run"] == [
            2
        ] * len(runs)
    # paired over the three (seed, fold) runs both have: d = 10, 10, 10 → mean 10, s.e. 0
    d = [100 * (ua["full"][k] - ua["reference_cnn"][k]) for k in sorted(ua["reference_cnn"])]
    paired = summary["reference_cnn"]["full_minus_this_UA"]
    assert paired["n"] == 3 and paired["mean"] == pytest.approx(sum(d) / 3)
    sd = math.sqrt(sum((x - sum(d) / 3) ** 2 for x in d) / 2)
    assert paired["se"] == pytest.approx(sd / math.sqrt(3), abs=1e-9)
    assert "full_minus_this_UA" not in summary["full"]
    meta = {
        "n_utterances": 10,
        "n_actors": 2,
        "selection_rule": "rule",
        "preset": "cpu-fbank",
        "overrides": {},
        "machine": "m",
    }
    table = accuracy.markdown(summary, meta)
    rows = [
        line
        for line in table.splitlines()
        if line.startswith("| full |") or line.startswith("| reference_cnn |")
    ]
    assert rows[0].startswith("| full | 4 | ") and "| — |" in rows[0]
    # full ahead in all three pairs (d = 10, 10, 10)
    assert paired["ahead"] == 3 and paired["behind"] == 0
    assert (
        rows[1].startswith("| reference_cnn | 3 | ")
        and f"{sum(d) / 3:+.1f} ± {sd / math.sqrt(3):.1f} (n=3, 3 ahead, 0 behind)" in rows[1]
    )


def test_paired_difference_uses_only_common_runs(accuracy):
    a = {(0, 0): 60.0, (0, 1): 50.0, (1, 0): 70.0}
    b = {(0, 0): 55.0, (0, 1): 52.0, (2, 2): 10.0}
    got = accuracy.paired_difference(a, b)
    assert got["n"] == 2 and got["mean"] == pytest.approx(1.5)
    assert got["ahead"] == 1 and got["behind"] == 1  # +5 and −2
    level = accuracy.paired_difference({(0, 0): 1.0, (0, 1): 2.0}, {(0, 0): 1.0, (0, 1): 3.0})
    assert (level["ahead"], level["behind"]) == (0, 1)  # a tie counts neither way
    assert got["se"] == pytest.approx(math.sqrt(((5 - 1.5) ** 2 + (-2 - 1.5) ** 2) / 1) / math.sqrt(2))
    assert accuracy.paired_difference(a, {})["n"] == 0
    assert accuracy.paired_difference({(0, 0): 1.0}, {(0, 0): 0.5})["se"] is None


def test_a_run_is_claimed_once_and_taken_over_from_a_dead_claimer(tmp_path, accuracy):
    run = tmp_path / "full" / "seed-0" / "fold-0"
    assert accuracy.claim(run) is True
    assert (run / "claim").read_text() == str(os.getpid())
    assert accuracy.claim(run) is False  # held by a live process (this one)
    (run / "claim").write_text("999999999")  # a pid that cannot be alive
    assert accuracy.claim(run) is True
    (run / "result.json").write_text("{}")
    assert accuracy.claim(run) is False  # finished


def test_last_epoch_against_selected_epoch_and_seed_spread(tmp_path, accuracy):
    """Runs that recorded the last epoch's test UA: the paired difference selected − last and the
    seeds' spread per fold under each ending, against references computed here; runs without the
    record (trained before it existed) are left out of that table only."""
    selected = {(0, 0): 0.60, (1, 0): 0.50, (0, 1): 0.70, (1, 1): 0.66, (0, 2): 0.40}
    last = {(0, 0): 0.58, (1, 0): 0.55, (0, 1): 0.69, (1, 1): 0.67}  # (0, 2) has no record
    for (seed, fold), value in selected.items():
        write_run(tmp_path, "full", seed, fold, value, [1.0], last.get((seed, fold)))
    row = accuracy.summarise(accuracy.collect(tmp_path))["full"]
    assert len(row["runs"]) == 5
    end = row["last_epoch"]
    d = [100 * (selected[k] - last[k]) for k in sorted(last)]
    mean = sum(d) / len(d)
    se = math.sqrt(sum((x - mean) ** 2 for x in d) / (len(d) - 1)) / math.sqrt(len(d))
    got = end["selected_minus_last_UA"]
    assert got["n"] == 4 and got["mean"] == pytest.approx(mean) and got["se"] == pytest.approx(se)
    # folds 0 and 1 have both seeds: |60 − 50| and |70 − 66| selected; |58 − 55| and |69 − 67| last
    assert end["seed_spread_selected"] == {"mean": pytest.approx(7.0), "folds": 2}
    assert end["seed_spread_last"] == {"mean": pytest.approx(2.5), "folds": 2}
    table = accuracy.markdown({"full": row}, TABLE_META)
    assert f"| full | 4 | {mean:+.1f} ± {se:.1f} | 7.0 (2 folds) | 2.5 (2 folds) | — |" in table


def test_full_against_a_variant_at_the_last_epoch(tmp_path, accuracy):
    """full − variant of the last epoch's test UA, over the runs of both that recorded it, against
    a reference computed here; a variant without last-epoch records has no such row."""
    full_last = {(0, 0): 0.60, (0, 1): 0.52, (1, 0): 0.58}
    eam_last = {(0, 0): 0.62, (0, 1): 0.50, (1, 0): 0.61}
    for (seed, fold), value in full_last.items():
        write_run(tmp_path, "full", seed, fold, 0.5, [1.0], value)
    for (seed, fold), value in eam_last.items():
        write_run(tmp_path, "with_eam", seed, fold, 0.5, [1.0], value)
    write_run(tmp_path, "no_flam", 0, 0, 0.4, [1.0])  # trained before the record existed
    summary = accuracy.summarise(accuracy.collect(tmp_path))
    d = [100 * (full_last[k] - eam_last[k]) for k in sorted(full_last)]  # −2, +2, −3
    mean = sum(d) / 3
    se = math.sqrt(sum((x - mean) ** 2 for x in d) / 2) / math.sqrt(3)
    got = summary["with_eam"]["last_epoch"]["full_minus_this_UA"]
    assert got["n"] == 3 and got["mean"] == pytest.approx(mean) and got["se"] == pytest.approx(se)
    assert (got["ahead"], got["behind"]) == (1, 2)
    assert (
        "last_epoch" not in summary["no_flam"] and "full_minus_this_UA" not in summary["full"]["last_epoch"]
    )
    table = accuracy.markdown(summary, TABLE_META)
    expected = f"| {mean:+.1f} ± {se:.1f} (n=3, 1 ahead, 2 behind) |"
    rows = [line for line in table.splitlines() if line.startswith("| with_eam | 3 | ")]
    assert len(rows) == 2 and rows[1].endswith(expected)  # the first table's row, then how-a-run-ends
