"""Drift statistics (data_contracts/drift.py) against reference implementations written here."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import soundfile as sf
from scipy import stats

from data_contracts.drift import (
    SILENCE_DBFS,
    counts_sample,
    file_loudness,
    ks_statistic,
    rms_dbfs,
    total_variation,
)


def reference_total_variation(a, b) -> float:
    """½ Σ |p − q| over every category, by counting."""
    ca, cb = Counter(map(str, a)), Counter(map(str, b))
    return 0.5 * sum(abs(ca[c] / len(a) - cb[c] / len(b)) for c in set(ca) | set(cb))


@pytest.mark.parametrize("seed", range(6))
def test_ks_statistic_is_scipys_two_sample_statistic(seed):
    rng = np.random.default_rng(seed)
    a = rng.normal(0.0, 1.0, size=rng.integers(5, 300))
    b = rng.normal(rng.uniform(-1, 1), rng.uniform(0.5, 2), size=rng.integers(5, 300))
    if seed % 2:  # ties within and across the samples
        a, b = np.round(a), np.round(b)
    assert ks_statistic(a, b) == pytest.approx(stats.ks_2samp(a, b).statistic, abs=1e-12)


def test_ks_statistic_is_zero_for_the_same_distribution_and_one_when_disjoint():
    x = [3.0, 1.0, 2.0, 2.0]
    assert ks_statistic(x, list(reversed(x))) == 0.0
    assert ks_statistic([1.0, 2.0], [5.0, 6.0, 7.0]) == 1.0
    with pytest.raises(ValueError, match="new sample is empty"):
        ks_statistic([1.0], [])
    with pytest.raises(ValueError, match="NaN"):
        ks_statistic([1.0, math.nan], [1.0])


@pytest.mark.parametrize("seed", range(6))
def test_total_variation_matches_counting(seed):
    rng = np.random.default_rng(seed)
    a = rng.choice(["angry", "sad", "happy", "calm"], size=rng.integers(1, 200), p=[0.4, 0.3, 0.2, 0.1])
    b = rng.choice(["angry", "sad", "happy", "fearful"], size=rng.integers(1, 200))
    assert total_variation(a, b) == pytest.approx(reference_total_variation(a, b), abs=1e-12)


def test_total_variation_bounds_and_categories_as_text():
    assert total_variation([16000, 16000, 48000], ["48000", "16000", "16000"]) == 0.0
    assert total_variation(["Actor_01", "Actor_02"], ["Actor_09"]) == 1.0  # only new speakers
    assert total_variation([1, 1, 2, 2], [1, 1, 1, 1]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="empty"):
        total_variation([], [1])


def test_counts_sample_turns_a_histogram_into_values():
    assert counts_sample([2, 0, 1], ["a", "b", "c"]) == ["a", "a", "c"]
    assert total_variation(counts_sample([5, 5], ["x", "y"]), ["x", "y"]) == 0.0
    with pytest.raises(ValueError, match="2 counts for 3 labels"):
        counts_sample([1, 2], ["a", "b", "c"])


def test_rms_dbfs_of_known_signals():
    n = np.arange(16000)
    assert rms_dbfs(np.where(n % 2, 1.0, -1.0)) == pytest.approx(0.0, abs=1e-9)  # full-scale square
    sine = 0.5 * np.sin(2 * np.pi * 440 * n / 16000)
    assert rms_dbfs(sine) == pytest.approx(20 * math.log10(0.5 / math.sqrt(2)), abs=1e-3)
    assert rms_dbfs(np.zeros(100)) == SILENCE_DBFS
    stereo = np.stack([sine, sine], axis=1)  # the same level on both channels is the same level
    assert rms_dbfs(stereo) == pytest.approx(rms_dbfs(sine), abs=1e-9)


def test_file_loudness_reads_files_as_stored(tmp_path):
    n = np.arange(8000)
    wave = (0.3 * np.sin(2 * np.pi * 200 * n / 8000)).astype(np.float32)
    sf.write(tmp_path / "a.wav", wave, 8000, subtype="FLOAT")
    sf.write(tmp_path / "quiet.flac", wave * 0.1, 8000, subtype="PCM_16")
    levels = file_loudness(tmp_path, ["a.wav", "quiet.flac"])
    assert levels[0] == pytest.approx(rms_dbfs(wave), abs=1e-6)
    assert levels[0] - levels[1] == pytest.approx(20.0, abs=0.05)  # a gain of 0.1 is 20 dB quieter
    (tmp_path / "bad.wav").write_bytes(b"not audio")
    with pytest.raises(ValueError, match="bad.wav"):
        file_loudness(tmp_path, ["bad.wav"])
