"""Drift between two sets of utterances: one number per feature, in [0, 1], 0 when the two agree.

Two two-sample statistics, one per kind of feature, both free of any distributional assumption
and both read the same way (the largest difference between the two samples' shares):

* numeric features (duration, loudness): the two-sample Kolmogorov–Smirnov statistic
  ``D = max_x |F_ref(x) − F_new(x)|``, the largest gap between the two empirical CDFs
  (:func:`ks_statistic`);
* categorical features (original sample rate, channels, class, speaker, predicted class): the total
  variation distance ``TV = ½ Σ_c |p_ref(c) − p_new(c)|``, the share of one sample that would have
  to change category to match the other (:func:`total_variation`); categories seen on one side
  only count fully, so new speakers only give TV = 1.

Loudness is the RMS level of a file in dB full scale (:func:`rms_dbfs`), read at its original
sample rate and channels (:func:`file_loudness`). numpy and soundfile only: no torch here.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence

import numpy as np
import soundfile as sf

SILENCE_DBFS = -120.0
"""Level given to a file whose samples are all zero (log of 0), well below any recording."""

NUMERIC_FEATURES = ("duration_s", "loudness_dbfs")
"""Manifest columns (and the loudness read from the audio) compared by :func:`ks_statistic`."""
CATEGORICAL_FEATURES = ("sample_rate", "channels", "label", "speaker")
"""Manifest columns compared by :func:`total_variation`."""


def ks_statistic(reference: Sequence[float], new: Sequence[float]) -> float:
    """Two-sample Kolmogorov–Smirnov statistic ``D = sup_x |F_ref(x) − F_new(x)|``.

    F is the empirical CDF (share of the sample <= x); the supremum is reached at one of the
    pooled observations, so both CDFs are evaluated there (ties handled by ``side="right"``).
    reference (N,), new (M,), both non-empty and finite. Returns D in [0, 1].
    """
    a = np.sort(np.asarray(reference, dtype=np.float64).ravel())
    b = np.sort(np.asarray(new, dtype=np.float64).ravel())
    for name, x in (("reference", a), ("new", b)):
        if x.size == 0:
            raise ValueError(f"ks_statistic: the {name} sample is empty; expected at least one value")
        if not np.isfinite(x).all():
            raise ValueError(f"ks_statistic: the {name} sample holds NaN or infinite values")
    pooled = np.concatenate([a, b])  # (N + M,)
    cdf_a = np.searchsorted(a, pooled, side="right") / a.size
    cdf_b = np.searchsorted(b, pooled, side="right") / b.size
    return float(np.abs(cdf_a - cdf_b).max())


def category_counts(values: Iterable[object]) -> dict[str, int]:
    """Count of each category (as text, so 16000 and "16000" are one) in a sample."""
    counts: dict[str, int] = {}
    for value in values:
        key = str(value)
        counts[key] = counts.get(key, 0) + 1
    return counts


def category_shares(values: Iterable[object]) -> dict[str, float]:
    """Share of each category (:func:`category_counts` over the sample size) in a non-empty sample."""
    counts = category_counts(values)
    total = sum(counts.values())
    if total == 0:
        raise ValueError("category_shares: the sample is empty; expected at least one value")
    return {key: count / total for key, count in counts.items()}


def total_variation(reference: Iterable[object], new: Iterable[object]) -> float:
    """Total variation distance between the category shares of two samples:
    ``TV = ½ Σ_c |p_ref(c) − p_new(c)|`` over the categories of either sample, in [0, 1].

    Computed on counts, ``Σ_c |n_ref(c)·N_new − n_new(c)·N_ref| / (2·N_ref·N_new)``, in integers
    until the one division, so disjoint samples give exactly 1 and equal shares exactly 0."""
    a, b = category_counts(reference), category_counts(new)
    n_a, n_b = sum(a.values()), sum(b.values())
    for name, n in (("reference", n_a), ("new", n_b)):
        if n == 0:
            raise ValueError(f"total_variation: the {name} sample is empty; expected at least one value")
    difference = sum(abs(a.get(c, 0) * n_b - b.get(c, 0) * n_a) for c in set(a) | set(b))
    return difference / (2 * n_a * n_b)


def counts_sample(counts: Sequence[int], labels: Sequence[str]) -> list[str]:
    """A sample with ``counts[c]`` copies of ``labels[c]``: a histogram (a confusion matrix's column
    sums) as values :func:`total_variation` compares."""
    if len(counts) != len(labels):
        raise ValueError(f"counts_sample: {len(counts)} counts for {len(labels)} labels")
    return [label for label, count in zip(labels, counts) for _ in range(int(count))]


def rms_dbfs(samples: np.ndarray) -> float:
    """RMS level in dB relative to full scale: ``20 log10 sqrt(mean(x²))`` over every sample of
    every channel (x in [-1, 1]); :data:`SILENCE_DBFS` for all-zero audio. A full-scale square
    wave is 0 dBFS, a full-scale sine −3.01 dBFS."""
    x = np.asarray(samples, dtype=np.float64)
    if x.size == 0:
        raise ValueError("rms_dbfs: no samples")
    power = float(np.mean(x * x))
    return SILENCE_DBFS if power <= 0.0 else max(SILENCE_DBFS, 10.0 * math.log10(power))


def file_loudness(root: str | os.PathLike, paths: Sequence[str]) -> np.ndarray:
    """:func:`rms_dbfs` of each file (relative to ``root``) as stored: original rate and channels.
    (N,) float64; an unreadable file raises ValueError naming it."""
    levels = np.empty(len(paths), dtype=np.float64)
    for i, path in enumerate(paths):
        full = os.path.join(root, path)
        try:
            samples, _ = sf.read(full, dtype="float32", always_2d=True)
        except (OSError, RuntimeError, sf.LibsndfileError) as err:
            raise ValueError(f"{full}: cannot read the audio to measure its loudness ({err})") from err
        levels[i] = rms_dbfs(samples)
    return levels
