"""The train flow's figures: a confusion matrix, training curves, the reliability diagram and the
coverage curve of the calibration, and the monitor's drift figures, built as
``matplotlib.figure.Figure`` objects without pyplot, so no GUI backend is chosen, no global figure
list grows, and nothing needs closing; ``MlflowClient.log_figure`` saves them as PNG."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from data_contracts.drift import category_shares
from ser_model.metrics import metric_leaves
from ser_model.monitor import CONFIDENCE_FEATURE, PREDICTED_FEATURE, is_numeric


def confusion_figure(confusion: np.ndarray, labels: tuple[str, ...] | list[str], title: str) -> Figure:
    """Confusion matrix heat map with counts and row-normalised recall in each cell."""
    confusion = np.asarray(confusion)
    recall = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    size = 1.2 + 0.7 * len(labels)
    fig = Figure(figsize=(size + 1.5, size), layout="tight")
    ax = fig.subplots()
    image = ax.imshow(recall, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for i in range(confusion.shape[0]):
        for j in range(confusion.shape[1]):
            color = "white" if recall[i, j] > 0.5 else "black"
            text = f"{confusion[i, j]}\n{recall[i, j]:.0%}"
            ax.text(j, i, text, ha="center", va="center", fontsize=7, color=color)
    fig.colorbar(image, ax=ax, label="recall (row-normalised)")
    return fig


def training_curves_figure(records_by_fold: Mapping[int, list[Mapping[str, Any]]], title: str) -> Figure:
    """One panel per numeric epoch quantity (losses, lr, validation WA/UA/F1), one line per fold (per
    fold and member for an ensemble release, whose records carry ``member``: numbered one member after
    the other, their lines are not joined)."""
    leaves = (
        name
        for records in records_by_fold.values()
        for record in records
        for name, _ in metric_leaves(record)
    )
    names = sorted({name for name in leaves if name not in ("epoch", "member")}) or ["(no epoch metrics)"]
    columns = min(3, len(names))
    rows = math.ceil(len(names) / columns)
    fig = Figure(figsize=(4.2 * columns, 3.0 * rows), layout="tight")
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax, name in zip(axes.flat, names):
        for fold, records in sorted(records_by_fold.items()):
            members = sorted({r.get("member") for r in records}, key=lambda m: -1 if m is None else m)
            for member in members:
                points = [
                    (int(r.get("epoch", i)), dict(metric_leaves(r)).get(name))
                    for i, r in enumerate(records)
                    if r.get("member") == member
                ]
                points = [(e, v) for e, v in points if v is not None]
                label = f"fold {fold}" if member is None else f"fold {fold} member {member}"
                if points:
                    ax.plot(*zip(*points), marker="o", markersize=3, label=label)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("epoch")
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(title)
    return fig


def drift_figure(feature: str, reference: list, new: list, statistic: float) -> Figure:
    """The two samples of one drift feature: overlaid density histograms for a numeric feature, the
    share of each category side by side otherwise; the title names the statistic and its value."""
    fig = Figure(figsize=(6.4, 3.6), layout="tight")
    ax = fig.subplots()
    seen = (
        "champion on its validation rows"
        if feature in (PREDICTED_FEATURE, CONFIDENCE_FEATURE)
        else "champion's training rows"
    )
    if is_numeric(feature):
        values = np.concatenate([np.asarray(reference, float), np.asarray(new, float)])
        bins = np.histogram_bin_edges(values, bins=30)
        ax.hist(reference, bins=bins, density=True, alpha=0.5, label=f"{seen} (n={len(reference)})")
        ax.hist(new, bins=bins, density=True, alpha=0.5, label=f"new rows (n={len(new)})")
        ax.set_xlabel(feature)
        ax.set_ylabel("density")
        name = "KS"
    else:
        p, q = category_shares(reference), category_shares(new)
        categories = sorted(set(p) | set(q), key=lambda c: (-p.get(c, 0.0), c))
        x = np.arange(len(categories))
        ax.bar(x - 0.2, [p.get(c, 0.0) for c in categories], 0.4, label=f"{seen} (n={len(reference)})")
        ax.bar(x + 0.2, [q.get(c, 0.0) for c in categories], 0.4, label=f"new rows (n={len(new)})")
        ax.set_xticks(x, categories, rotation=45 if len(categories) > 4 else 0, ha="right", fontsize=8)
        ax.set_ylabel("share")
        name = "total variation"
    ax.set_title(f"{feature}: {name} {statistic:.3f}")
    ax.legend(fontsize=8)
    return fig


def reliability_figure(before: Mapping[str, list], after: Mapping[str, list], title: str) -> Figure:
    """Reliability diagram: per confidence bin (`ser_model.calibration.reliability_bins`) the
    accuracy of its answers before and after calibration against the diagonal (perfect calibration),
    and under it the number of answers in each bin."""
    fig = Figure(figsize=(6.4, 5.6), layout="tight")
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    lower, upper = np.asarray(after["lower"]), np.asarray(after["upper"])
    centre, width = (lower + upper) / 2, upper - lower
    top.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect calibration")
    for name, table, offset in (("before", before, -0.25), ("after", after, 0.25)):
        count = np.asarray(table["count"])
        seen = count > 0
        top.bar(
            (centre + offset * width / 2)[seen],
            np.asarray(table["accuracy"])[seen],
            width=width[seen] / 2,
            alpha=0.7,
            label=f"{name} (n={int(count.sum())})",
        )
        bottom.bar((centre + offset * width / 2)[seen], count[seen], width=width[seen] / 2, alpha=0.7)
    top.set_ylabel("accuracy in the bin")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.legend(fontsize=8, loc="upper left")
    top.set_title(title)
    bottom.set_xlabel("confidence (top probability)")
    bottom.set_ylabel("answers")
    return fig


def coverage_figure(coverage: Mapping[str, list], title: str) -> Figure:
    """Coverage curve (`ser_model.calibration.pooled_coverage`): the accuracy of the answers kept
    against the share kept as the confidence threshold rises, a few thresholds marked on the curve."""
    fig = Figure(figsize=(6.4, 4.0), layout="tight")
    ax = fig.subplots()
    points = [
        (t, s, a)
        for t, s, a in zip(coverage["threshold"], coverage["share"], coverage["accuracy"])
        if a is not None
    ]
    ax.plot([s for _, s, _ in points], [a for _, _, a in points], marker=".", markersize=3)
    for t, s, a in points:
        if round(t * 10, 6) % 1 == 0:  # every 0.1
            ax.annotate(f"P={t:.1f}", (s, a), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("share of answers kept (confidence ≥ P)")
    ax.set_ylabel("accuracy of the answers kept")
    ax.set_xlim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    return fig
