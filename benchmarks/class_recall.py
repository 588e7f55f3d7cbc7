"""Per-class test recall of a grid's variants (benchmarks/accuracy.py): for each class, the mean over a
variant's runs of the recall its result.json's test metrics record (``per_class_recall``, percent), so
that the classes a switch helps or hurts can be read beside the unweighted mean. A class a run's test
actors never show (recall None) is left out of that class's mean; a run that recorded no per-class
recall is not counted."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["class_recall", "class_recall_lines"]


def class_recall(tests: Iterable[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The runs' test metrics → {"runs": n, "mean": {class: mean recall %}} in the labels' order, or None
    when no run recorded per-class recall."""
    recalls = [test["per_class_recall"] for test in tests if test.get("per_class_recall")]
    if not recalls:
        return None
    classes = list(dict.fromkeys(name for recall in recalls for name in recall))
    mean = {}
    for name in classes:
        values = [100.0 * r[name] for r in recalls if r.get(name) is not None]
        mean[name] = statistics.fmean(values) if values else None
    return {"runs": len(recalls), "mean": mean}


def class_recall_lines(summary: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The table of every variant's ``per_class_recall`` (``class_recall``), or nothing when none has one."""
    rows = {v: row["per_class_recall"] for v, row in summary.items() if row.get("per_class_recall")}
    if not rows:
        return []
    classes = list(dict.fromkeys(name for recall in rows.values() for name in recall["mean"]))
    lines = [
        "",
        "Test recall % per class, mean over each variant's runs:",
        "",
        "| variant | runs | " + " | ".join(classes) + " |",
        "|---|---|" + "---|" * len(classes),
    ]
    for variant, recall in rows.items():
        cells = [recall["mean"].get(name) for name in classes]
        text = " | ".join("—" if x is None else f"{x:.1f}" for x in cells)
        lines.append(f"| {variant} | {recall['runs']} | {text} |")
    return lines
