"""Long recordings in segments (ser_model/vad.py, ser_model/segments.py): frame levels read in
blocks, the VAD's boundaries on bursts of known times, the one merging rule, sources, settings."""

from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile
import torch

from ser_model.audio import resample
from ser_model.config_validation import ConfigError
from ser_model.errors import AudioDecodeError
from ser_model.inference import Predictor
from ser_model.model import SERModel
from ser_model.segments import (
    ArraySource,
    FileSource,
    SegmentConfig,
    merge_windows,
    read_at_rate,
    segment_file,
    segment_recording,
    segment_records,
)
from ser_model.vad import FrameLevels, hysteresis_runs, speech_regions
from tests.train.synthetic import tiny_config

SR = 16000


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    torch.manual_seed(0)
    return Predictor(SERModel(tiny_config()).eval())


def bursts(
    spans: list[tuple[float, float]],
    total_s: float,
    sr: int = SR,
    gap_noise_dbfs: float | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Harmonic bursts (speech-like level, -20 dBFS) at the given [start, end) seconds; the rest
    digital silence, or white noise at `gap_noise_dbfs` (mean square, dB re full scale)."""
    rng = np.random.default_rng(seed)
    n = int(round(total_s * sr))
    wave = np.zeros(n, dtype=np.float64)
    if gap_noise_dbfs is not None:
        wave += rng.standard_normal(n) * 10 ** (gap_noise_dbfs / 20)
    for i, (start, end) in enumerate(spans):
        a, b = int(round(start * sr)), int(round(end * sr))
        t = np.arange(b - a) / sr
        f0 = 120.0 + 40 * i
        wave[a:b] = sum(0.1 / k * np.sin(2 * np.pi * k * f0 * t) for k in range(1, 6))
    return wave.astype(np.float32)


def reference_levels(wave: np.ndarray, frame: int, hop: int) -> np.ndarray:
    """L_k computed frame by frame from its definition."""
    return np.array(
        [
            10 * np.log10(np.mean(wave[k : k + frame].astype(np.float64) ** 2) + 1e-12)
            for k in range(0, len(wave) - frame + 1, hop)
        ]
    )


@pytest.mark.parametrize("block", [1, 7, 399, 400, 401, 4096, 100000])
def test_frame_levels_fed_in_blocks_equal_the_levels_of_the_whole_signal(block):
    wave = np.random.default_rng(1).standard_normal(12345).astype(np.float32) * np.linspace(
        0, 1, 12345, dtype=np.float32
    )
    levels = FrameLevels(400, 160)
    for start in range(0, len(wave), block):
        levels.push(wave[start : start + block])
    np.testing.assert_allclose(levels.levels(), reference_levels(wave, 400, 160), atol=1e-6)


def test_hysteresis_runs_are_maximal_runs_above_off_that_reach_on():
    rng = np.random.default_rng(2)
    levels = rng.uniform(-60, 0, 500)
    on, off = np.full(500, -10.0), np.full(500, -30.0)
    runs = hysteresis_runs(levels, on, off)
    inside = np.zeros(500, dtype=bool)
    for start, stop in runs:
        assert (levels[start:stop] > off[start:stop]).all()
        assert (levels[start:stop] > on[start:stop]).any()
        assert start == 0 or levels[start - 1] <= off[start - 1]
        assert stop == 500 or levels[stop] <= off[stop]
        inside[start:stop] = True
    assert inside[levels > on].all()


@pytest.mark.parametrize("gap_noise_dbfs", [None, -70.0, -50.0])
def test_vad_finds_bursts_within_a_frame_plus_padding(gap_noise_dbfs):
    truth = [(1.0, 3.2), (4.7, 5.5), (7.0, 11.0), (12.0, 12.6)]
    wave = bursts(truth, 14.0, gap_noise_dbfs=gap_noise_dbfs)
    config = SegmentConfig()
    regions = speech_regions(_levels(wave), config, len(wave) / SR, frame_s=400 / SR, hop_s=160 / SR)
    assert len(regions) == len(truth), regions
    slack = config.pad_s + config.frame_s + 0.011
    for (start, end), (t_start, t_end) in zip(regions, truth):
        assert t_start - slack <= start <= t_start - config.pad_s + 0.011
        assert t_end + config.pad_s - 0.011 <= end <= t_end + slack


def _levels(wave: np.ndarray) -> np.ndarray:
    levels = FrameLevels(400, 160)
    levels.push(wave)
    return levels.levels()


def test_short_pauses_are_filled_short_clicks_dropped_and_silence_or_steady_noise_hold_no_speech():
    config = SegmentConfig()
    duration = 10.0
    pause = bursts([(1.0, 2.0), (2.3, 3.5)], duration)  # 0.3 s pause < min_silence_s 0.5
    assert len(speech_regions(_levels(pause), config, duration, 400 / SR, 160 / SR)) == 1
    apart = bursts([(1.0, 2.0), (2.8, 3.5)], duration)
    assert len(speech_regions(_levels(apart), config, duration, 400 / SR, 160 / SR)) == 2
    click = bursts([(1.0, 2.0), (5.0, 5.1)], duration)  # 0.1 s < min_speech_s 0.25
    assert len(speech_regions(_levels(click), config, duration, 400 / SR, 160 / SR)) == 1
    for quiet in (np.zeros(int(duration * SR), np.float32), bursts([], duration, gap_noise_dbfs=-40.0)):
        assert speech_regions(_levels(quiet), config, duration, 400 / SR, 160 / SR) == []


def _cells(spans: np.ndarray, probabilities: np.ndarray) -> list[tuple[float, float, np.ndarray]]:
    """Reference: the region cut at every window edge, each cell the mean of the windows covering it."""
    edges = sorted(set(spans.ravel().tolist()))
    cells = []
    for a, b in zip(edges[:-1], edges[1:]):
        covering = [p for (s, e), p in zip(spans, probabilities) if s <= a and e >= b]
        cells.append((a, b, np.mean(covering, axis=0)))
    return cells


@pytest.mark.parametrize("seed", range(8))
def test_merged_segments_tile_the_region_keep_its_probability_mass_and_respect_the_minimum(seed):
    rng = np.random.default_rng(seed)
    labels = ("a", "b", "c")
    n = int(rng.integers(1, 9))
    spans = np.array([(2.0 * i, 2.0 * i + 4.0) for i in range(n)]) + 10.0
    probabilities = rng.dirichlet(np.full(3, 0.3), size=n)
    segments = merge_windows(spans, probabilities, labels, min_segment_s=1.0)
    assert segments[0].start_s == spans[0, 0] and segments[-1].end_s == spans[-1, 1]
    assert all(a.end_s == b.start_s for a, b in zip(segments, segments[1:]))
    assert all(a.label != b.label for a, b in zip(segments, segments[1:]))
    if len(segments) > 1:
        assert min(s.end_s - s.start_s for s in segments) >= 1.0
    for s in segments:
        assert math.isclose(sum(s.probabilities), 1.0, abs_tol=1e-9)
        assert s.label == labels[int(np.argmax(s.probabilities))]
    cells = _cells(spans, probabilities)
    by_cells = sum((b - a) * p for a, b, p in cells)
    by_segments = sum((s.end_s - s.start_s) * np.array(s.probabilities) for s in segments)
    np.testing.assert_allclose(by_segments, by_cells, atol=1e-9)


def test_a_clear_change_of_emotion_inside_a_region_splits_it_where_the_windows_change():
    labels = ("calm", "angry")
    spans = np.array([(0.0, 4.0), (2.0, 6.0), (4.0, 8.0), (6.0, 10.0), (8.0, 12.0)])
    probabilities = np.array([[0.9, 0.1], [0.9, 0.1], [0.8, 0.2], [0.1, 0.9], [0.1, 0.9]])
    segments = merge_windows(spans, probabilities, labels, min_segment_s=1.0)
    assert [(s.start_s, s.end_s, s.label) for s in segments] == [(0.0, 6.0, "calm"), (6.0, 12.0, "angry")]
    (single,) = merge_windows(np.array([(3.0, 5.5)]), np.array([[0.3, 0.7]]), labels, 1.0)
    assert (single.start_s, single.end_s, single.label, single.probabilities) == (
        3.0,
        5.5,
        "angry",
        (0.3, 0.7),
    )


def test_resampled_pieces_match_the_whole_recording_resampled_at_once():
    wave = bursts([(0.2, 1.7)], 2.0, sr=44100, gap_noise_dbfs=-50)
    whole = resample(wave, 44100, SR)
    source = ArraySource(wave, 44100)
    for start, stop in ((0, 20000), (13001, 50000), (44100, len(wave))):
        piece = read_at_rate(source, start, stop, SR)
        offset = round(start * SR / 44100)
        np.testing.assert_allclose(piece[5:-5], whole[offset : offset + len(piece)][5:-5], atol=2e-4)


class CountingSource(ArraySource):
    """An ArraySource that remembers the longest piece read from it."""

    longest = 0

    def read(self, start: int, stop: int) -> np.ndarray:
        self.longest = max(self.longest, stop - start)
        return super().read(start, stop)


def test_a_recording_is_read_in_bounded_pieces_and_block_size_does_not_change_the_segments(predictor):
    truth = [(1.0, 3.0), (4.0, 15.0), (17.0, 18.5)]
    wave = bursts(truth, 20.0, gap_noise_dbfs=-65)
    results = []
    for block_s in (0.37, 5.0, 30.0):
        config = SegmentConfig(block_s=block_s)
        source = CountingSource(wave, SR)
        results.append(segment_records(segment_recording(source, predictor, config), predictor.labels))
        assert source.longest <= max(round(block_s * SR), round(config.window_s * SR)), (
            block_s,
            source.longest,
        )
    assert results[0] == results[1] == results[2]
    assert len(results[0]) >= len(truth)


def test_a_file_and_the_same_samples_in_memory_give_the_same_segments(predictor, tmp_path):
    wave = bursts([(0.5, 2.0), (3.0, 9.5)], 11.0, sr=44100, gap_noise_dbfs=-60)
    stereo = np.stack([wave, 0.5 * wave], axis=1)
    path = tmp_path / "stereo44k.wav"
    soundfile.write(path, stereo, 44100, subtype="FLOAT")
    from_file = segment_records(segment_file(path, predictor), predictor.labels)
    in_memory = segment_records(segment_recording(ArraySource(stereo, 44100), predictor), predictor.labels)
    assert from_file == in_memory
    assert [r["start_s"] for r in from_file][0] == pytest.approx(0.5 - 0.1, abs=0.03)


def test_bad_settings_and_bad_audio_are_refused_with_what_was_wrong(tmp_path):
    with pytest.raises(ConfigError, match=r"SegmentConfig.hop_s: got 5.0 > window_s 4.0"):
        SegmentConfig(hop_s=5.0)
    with pytest.raises(ConfigError, match=r"unknown key 'window'; valid keys: \['window_s'"):
        SegmentConfig().with_overrides({"window": 3})
    with pytest.raises(ConfigError, match=r"SegmentConfig.batch_size: got 1.5"):
        SegmentConfig(batch_size=1.5)
    with pytest.raises(
        ConfigError, match=r"noise_percentile: got 96.0, expected below level_percentile 95.0"
    ):
        SegmentConfig(noise_percentile=96.0)
    wave = bursts([(0.5, 1.5)], 2.0)
    wave[SR + 160] = np.nan
    path = tmp_path / "nan.wav"
    soundfile.write(path, wave, SR, subtype="FLOAT")
    with (
        FileSource(path) as source,
        pytest.raises(
            AudioDecodeError,
            match=r"nan.wav: the audio holds NaN or infinite samples \(the first at 1.010 s\)",
        ),
    ):
        source.read(0, source.frames)
    (tmp_path / "not-audio.wav").write_bytes(b"RIFF nonsense")
    with pytest.raises(AudioDecodeError, match="not-audio.wav: cannot decode audio"):
        FileSource(tmp_path / "not-audio.wav")
    with pytest.raises(AudioDecodeError, match=r"row 3: got audio of shape \(0,\)"):
        ArraySource(np.zeros(0), SR, name="row 3")


def test_audio_so_loud_that_the_features_overflow_is_refused_with_where(predictor):
    """Finite samples far beyond [-1, 1] overflow the log-mel power: the window is named, never NaN
    probabilities in the segments."""
    wave = bursts([(0.5, 1.5)], 2.0) * np.float32(1e19)
    assert np.isfinite(wave).all()
    with pytest.raises(AudioDecodeError, match=r"the window at 0\.\d+ s: the model's features overflow"):
        segment_recording(ArraySource(wave, SR), predictor)
