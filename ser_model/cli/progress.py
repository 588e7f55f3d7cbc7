"""Progress on a terminal: a bar over seconds of audio on stderr, nothing in a log or a pipe."""

from __future__ import annotations

import sys
from collections.abc import Callable


def audio_progress_bar(total_s: float, what: str) -> Callable[[float], None] | None:
    """A progress bar over seconds of audio on a terminal (stderr): a function that advances it
    by seconds done; None where stderr is not a terminal."""
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    bar = tqdm(
        total=round(total_s, 1),
        unit="s",
        desc=what,
        leave=False,
        bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s audio",
    )
    return lambda seconds: bar.update(seconds)
