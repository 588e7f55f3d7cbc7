"""The timeline picture of a segmented recording (`ser predict --segments --plot PNG`).

For each recording, two panels over the same time axis:

- top: one lane per class; each segment is a bar in its label's lane, in the class's colour,
  as opaque as the model is confident (alpha = 0.2 + 0.8 · p(label)), so a glance shows what was
  felt when and how sure the model is;
- bottom: every class's probability in each segment, stacked to 1; gaps are silence.

Time is in seconds, or minutes for recordings longer than 5 minutes. matplotlib is imported when
a picture is drawn, with the Agg backend (no display needed).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ser_model.segments import Segment

__all__ = ["Track", "timeline_figure", "save_timeline"]

MINUTES_ABOVE_S = 300.0


@dataclass(frozen=True)
class Track:
    """One recording's segments and its duration in seconds, under a title (its file name)."""

    title: str
    segments: Sequence[Segment]
    duration_s: float


def timeline_figure(tracks: Sequence[Track], labels: Sequence[str]) -> Figure:
    """The figure of the module docstring, two panels per track, stacked vertically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    if not tracks:
        raise ValueError("timeline_figure: no recordings to draw; expected at least one")
    colours = [plt.get_cmap("tab10")(i % 10) for i in range(len(labels))]
    figure, axes = plt.subplots(
        2 * len(tracks),
        1,
        figsize=(12, 4.2 * len(tracks)),
        squeeze=False,
        gridspec_kw={"height_ratios": [3, 1.4] * len(tracks)},
    )
    for t, track in enumerate(tracks):
        lanes, stack = axes[2 * t, 0], axes[2 * t + 1, 0]
        scale, unit = (60.0, "min") if track.duration_s > MINUTES_ABOVE_S else (1.0, "s")
        for s in track.segments:
            c = labels.index(s.label)
            confidence = s.probabilities[c]
            start, width = s.start_s / scale, (s.end_s - s.start_s) / scale
            lanes.barh(
                c,
                width,
                left=start,
                height=0.8,
                color=colours[c],
                alpha=0.2 + 0.8 * confidence,
                edgecolor="none",
            )
            if width * 60 > track.duration_s / scale:  # wide enough to hold its number
                lanes.text(start + width / 2, c, f"{confidence:.2f}", ha="center", va="center", fontsize=7)
            bottom = 0.0
            for k, p in enumerate(s.probabilities):
                stack.bar(
                    start, p, width=width, bottom=bottom, align="edge", color=colours[k], edgecolor="none"
                )
                bottom += p
        for axis in (lanes, stack):
            axis.set_xlim(0, track.duration_s / scale)
            axis.grid(axis="x", alpha=0.3)
        lanes.set_yticks(np.arange(len(labels)), labels)
        lanes.set_ylim(len(labels) - 0.5, -0.5)
        lanes.set_title(
            f"{track.title}: {len(track.segments)} segments (bar opacity = confidence)",
            fontsize=10,
            loc="left",
        )
        stack.set_ylim(0, 1)
        stack.set_ylabel("p(class)")
        stack.set_xlabel(f"time ({unit})")
    handles = [matplotlib.patches.Patch(color=colours[k], label=label) for k, label in enumerate(labels)]
    axes[-1, 0].legend(
        handles=handles,
        ncol=min(len(labels), 8),
        loc="upper center",
        bbox_to_anchor=(0.5, -0.45),
        fontsize=8,
        frameon=False,
    )
    figure.tight_layout()
    return figure


def save_timeline(
    path: str | os.PathLike, tracks: Sequence[Track], labels: Sequence[str], dpi: int = 100
) -> None:
    """Draw `timeline_figure` and write it as a PNG (OSError when the path cannot be written)."""
    import matplotlib.pyplot as plt

    figure = timeline_figure(tracks, labels)
    try:
        figure.savefig(path, dpi=dpi, format="png")
    finally:
        plt.close(figure)
