"""The calibration figures of a grid of runs (benchmarks/accuracy.py): per variant, over the runs whose
result.json holds a fold's calibration block (ser_model.calibration.calibration_record), the mean of
each of ECE, Brier and NLL before and after temperature scaling on the test speakers, the sample std
of ECE after, in how many runs ECE did not rise, the reliability bins and coverage pooled over the
runs, and the threshold table of the pooled coverage.

ECE has a floor that depends on the sample size (``ser_model.calibration.calibration_error_floor``:
what a perfectly calibrated model reads): about 0.075 for one RAVDESS fold's 240 test utterances in
15 bins. So beside the mean of the runs' ECE the summary gives each run's floor (mean) and the ECE of
every run's answers pooled (the runs' bins summed, 1,199 utterances per seed), with its floor."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ser_model.calibration import (
    binned_calibration_error,
    calibration_error_floor,
    calibration_means,
    pooled_reliability,
    threshold_table,
)
from ser_model.metrics import mean_and_std

__all__ = ["calibration_summary", "calibration_lines", "write_reliability_figures"]


def calibration_summary(blocks: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The grid's figures (module docstring) of the calibration blocks of one variant's runs."""
    _, ece_std = mean_and_std([b["ECE_after"] for b in blocks])
    before = pooled_reliability([b["reliability_before"] for b in blocks])
    after = pooled_reliability([b["reliability_after"] for b in blocks])
    return {
        "runs": len(blocks),
        "mean": calibration_means(blocks),
        "ECE_after_std": ece_std,
        "ECE_not_worse": sum(b["ECE_after"] <= b["ECE_before"] for b in blocks),
        "ECE_floor_after": float(
            sum(calibration_error_floor(b["reliability_after"]) for b in blocks) / len(blocks)
        ),
        "pooled": {
            "utterances": int(sum(after["count"])),
            "ECE_before": binned_calibration_error(before),
            "ECE_after": binned_calibration_error(after),
            "ECE_floor_after": calibration_error_floor(after),
        },
        "reliability_before": before,
        "reliability_after": after,
        "thresholds": threshold_table([b["coverage"] for b in blocks]),
    }


def calibration_lines(summary: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The Markdown table of the variants that have a calibration summary (``row["calibration"]``)."""
    rows = {v: row["calibration"] for v, row in summary.items() if row.get("calibration")}
    if not rows:
        return []
    lines = [
        "",
        "Calibration on the test speakers (temperature fitted on each run's validation speakers; ECE over 15 "
        "equal-width bins), mean over runs; the threshold table pools the runs' coverage counts:",
        "",
        "| variant | runs | T | ECE before | ECE after (± std) | its floor | ECE not worse "
        "| pooled ECE before → after (floor, utterances) | Brier before → after "
        "| NLL before → after | P for 80 % (share kept) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for variant, c in rows.items():
        m = c["mean"]
        p80 = next((r for r in c["thresholds"] if r["target_accuracy"] == 0.8), None)
        kept = (
            "—"
            if p80 is None or p80["min_confidence"] is None
            else f"{p80['min_confidence']:.2f} ({100 * p80['kept_share']:.0f} %)"
        )
        pooled = c["pooled"]
        lines.append(
            f"| {variant} | {c['runs']} | {m['temperature']:.3f} | {m['ECE_before']:.4f} | "
            f"{m['ECE_after']:.4f} ± {c['ECE_after_std']:.4f} | {c['ECE_floor_after']:.4f} | "
            f"{c['ECE_not_worse']} of {c['runs']} | {pooled['ECE_before']:.4f} → {pooled['ECE_after']:.4f} "
            f"({pooled['ECE_floor_after']:.4f}, {pooled['utterances']}) | "
            f"{m['brier_before']:.4f} → {m['brier_after']:.4f} | {m['NLL_before']:.4f} → {m['NLL_after']:.4f} | {kept} |"
        )
    return lines


def write_reliability_figures(out: Path, summary: Mapping[str, Mapping[str, Any]]) -> list[Path]:
    """``<out>/reliability_<variant>.png``: the pooled reliability diagram of each calibrated variant."""
    from flows.figures import reliability_figure

    written = []
    for variant, row in summary.items():
        c = row.get("calibration")
        if c:
            path = out / f"reliability_{variant}.png"
            title = f"RAVDESS, {variant}: {c['runs']} runs pooled, test speakers"
            reliability_figure(c["reliability_before"], c["reliability_after"], title).savefig(path, dpi=90)
            written.append(path)
    return written
