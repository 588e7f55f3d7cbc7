"""Voice-activity detection by an energy rule with a local noise floor and hysteresis (ours).

A recording is read in blocks; each block adds its frames' levels (`FrameLevels`), so the whole
recording is never in memory: an hour at a 10 ms hop is 360 000 levels (1.4 MB). From the levels,
`speech_regions` finds where someone speaks:

1. level of frame k (frame length F, hop H, samples x of the mono recording):
       L_k = 10 log10( (1/F) Σ_{n<F} x[k·H + n]² + 1e-12 )          (dB re full scale, ≥ −120)
2. around each frame, over a context of ``context_s`` seconds, the noise floor N_k (the
   ``noise_percentile``-th percentile of the levels) and the speech level S_k (the
   ``level_percentile``-th); evaluated once a second and interpolated between;
3. the speech threshold T_k = max(N_k + noise_margin_db, S_k − dynamic_range_db, floor_dbfs):
   clearly above the background, within the dynamic range of nearby speech, and above an
   absolute floor (so a recording of digital silence and faint hiss holds no speech);
4. hysteresis: a run of frames with L_k > T_k − hysteresis_db is speech when one of its frames
   has L_k > T_k (a quiet word ending stays attached to the loud syllable before it);
5. pauses shorter than ``min_silence_s`` are filled, regions shorter than ``min_speech_s``
   dropped, and each region padded by ``pad_s`` on both sides (clipped to the recording, merged
   where paddings meet).

A frame-level trained VAD (silero-vad ships its model in its wheel) was not needed to meet the
boundary target on the measured recordings (docs/RESULTS.md, "Long recordings").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ser_model.segments import SegmentConfig

__all__ = [
    "MIN_LEVEL_DB",
    "FrameLevels",
    "frame_levels",
    "speech_threshold",
    "hysteresis_runs",
    "speech_regions",
]

MIN_LEVEL_DB = -120.0
"""Level of digital silence: 10 log10(1e-12)."""


class FrameLevels:
    """Frame levels L_k (module docstring, step 1) of a signal fed in consecutive blocks.

    ``push(block)`` takes the next samples; the frames it completes are appended, so the result
    equals the levels of the concatenated signal (frames that would run past its end are not
    formed). Holds at most F − 1 samples between blocks.
    """

    def __init__(self, frame: int, hop: int):
        if frame < 1 or not 1 <= hop <= frame:
            raise ValueError(
                f"expected frame >= 1 and 1 <= hop <= frame samples, got frame={frame}, hop={hop}"
            )
        self.frame, self.hop = frame, hop
        self._carry = np.zeros(0, dtype=np.float64)
        self._levels: list[np.ndarray] = []

    def push(self, block: np.ndarray) -> None:
        buffer = np.concatenate([self._carry, np.asarray(block, dtype=np.float64)])
        if len(buffer) < self.frame:
            self._carry = buffer
            return
        n = (len(buffer) - self.frame) // self.hop + 1
        cumulative = np.concatenate([[0.0], np.cumsum(np.square(buffer))])
        starts = np.arange(n) * self.hop
        mean_square = (cumulative[starts + self.frame] - cumulative[starts]) / self.frame  # (n,)
        self._levels.append(10.0 * np.log10(np.maximum(mean_square, 0.0) + 1e-12))
        self._carry = buffer[n * self.hop :]

    def levels(self) -> np.ndarray:
        """(K,) float64 levels of the frames completed so far, in dB re full scale."""
        return np.concatenate(self._levels) if self._levels else np.zeros(0)


def frame_levels(wave: np.ndarray, frame: int, hop: int) -> np.ndarray:
    """L_k of a whole mono signal (module docstring, step 1): (N,) → (K,), K = ⌊(N − F)/H⌋ + 1."""
    levels = FrameLevels(frame, hop)
    levels.push(wave)
    return levels.levels()


def _local_percentiles(
    levels: np.ndarray, percentiles: Sequence[float], context: int, step: int
) -> np.ndarray:
    """(len(percentiles), K): each percentile of the levels within ±context/2 frames of grid
    points every `step` frames, linearly interpolated to every frame."""
    k = len(levels)
    grid = np.arange(0, k, step)
    if grid[-1] != k - 1:
        grid = np.append(grid, k - 1)
    half = max(1, context // 2)
    values = np.empty((len(percentiles), len(grid)))
    for i, g in enumerate(grid):
        values[:, i] = np.percentile(levels[max(0, g - half) : g + half + 1], percentiles)
    frames = np.arange(k)
    return np.stack([np.interp(frames, grid, row) for row in values])


def speech_threshold(levels: np.ndarray, config: SegmentConfig) -> np.ndarray:
    """T_k of the module docstring (steps 2 and 3), (K,) dB, for levels at the config's frame hop."""
    per_second = max(1, round(1.0 / config.frame_hop_s))
    context = max(1, round(config.context_s / config.frame_hop_s))
    floor, level = _local_percentiles(
        levels, (config.noise_percentile, config.level_percentile), context, per_second
    )
    return np.maximum.reduce(
        [
            floor + config.noise_margin_db,
            level - config.dynamic_range_db,
            np.full_like(floor, config.floor_dbfs),
        ]
    )


def hysteresis_runs(levels: np.ndarray, on: np.ndarray, off: np.ndarray) -> list[tuple[int, int]]:
    """[(first, last + 1)] frame runs where levels > off throughout and levels > on somewhere."""
    above = np.concatenate([[False], levels > off, [False]])
    edges = np.flatnonzero(np.diff(above.astype(np.int8)))
    runs = []
    for start, stop in zip(edges[::2], edges[1::2]):
        if np.any(levels[start:stop] > on[start:stop]):
            runs.append((int(start), int(stop)))
    return runs


def _fill_drop_pad(
    regions: list[tuple[float, float]], config: SegmentConfig, duration_s: float
) -> list[tuple[float, float]]:
    """Step 5 of the module docstring on regions in seconds."""
    filled: list[list[float]] = []
    for start, end in regions:
        if filled and start - filled[-1][1] < config.min_silence_s:
            filled[-1][1] = end
        else:
            filled.append([start, end])
    kept = [(s, e) for s, e in filled if e - s >= config.min_speech_s]
    padded: list[list[float]] = []
    for start, end in kept:
        start, end = max(0.0, start - config.pad_s), min(duration_s, end + config.pad_s)
        if padded and start <= padded[-1][1]:
            padded[-1][1] = end
        else:
            padded.append([start, end])
    return [(s, e) for s, e in padded]


def speech_regions(
    levels: np.ndarray,
    config: SegmentConfig,
    duration_s: float,
    frame_s: float | None = None,
    hop_s: float | None = None,
) -> list[tuple[float, float]]:
    """Speech regions [(start_s, end_s)] of a recording of `duration_s` seconds whose frame levels
    are `levels`: steps 2 to 5 of the module docstring. `frame_s` and `hop_s` are the frames'
    exact length and hop at the recording's rate (default: the config's, which whole samples round)."""
    if len(levels) == 0:
        return []
    frame_s = config.frame_s if frame_s is None else frame_s
    hop_s = config.frame_hop_s if hop_s is None else hop_s
    on = speech_threshold(levels, config)
    runs = hysteresis_runs(levels, on, on - config.hysteresis_db)
    regions = [(first * hop_s, min(duration_s, (last - 1) * hop_s + frame_s)) for first, last in runs]
    return _fill_drop_pad(regions, config, duration_s)
