"""Long recordings: an emotion per segment, with its times.

One pipeline for every path that scores a recording in segments (`ser predict --segments`,
`ser evaluate --segments`, the MLflow pyfunc's ``segments`` option, an exported ONNX graph):

1. the recording is an `AudioSource`: a file read with soundfile a block at a time (never whole,
   so an hour-long file is scored in bounded memory), or a waveform already in memory; either is
   down-mixed to mono at its own rate;
2. a first pass over blocks of ``block_s`` seconds gives the frame levels, and the energy VAD
   (`ser_model.vad`) the speech regions;
3. a region up to ``window_s`` long is one window; a longer one is cut into windows of
   ``window_s`` every ``hop_s`` (the last one ends with the region, `sliding_windows`); a second
   pass reads each window from the source, resamples it to the model's rate and trims its
   silence as every model input is (`prepare_waveform`);
4. a `WindowScorer` (`Predictor` in PyTorch, `ser_model.export.OnnxScorer` on ONNX Runtime)
   gives each window its class probabilities, ``batch_size`` windows at a time;
5. `merge_windows` turns each region's windows into segments: the one merging rule, whatever
   scored the windows;
6. `segment_records` gives each segment its ``confidence`` (top probability of the calibrated
   window probabilities, `ser_model.calibration`) and labels it ``"uncertain"`` below ``min_confidence``.

Settings are a `SegmentConfig` (frozen, validated; defaults below, overridden by name with
`SegmentConfig.with_overrides`, e.g. ``ser predict --segments --segment-set window_s=6``).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import soundfile

from ser_model.audio import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE, UNKNOWN_FRAMES, resample, to_mono, trim_silence
from ser_model.backbone_facts import HOP_SECONDS, WIN_SECONDS
from ser_model.calibration import decision
from ser_model.config_validation import NonNegative, PositiveInt, bounded, config_dataclass, require
from ser_model.errors import AudioDecodeError
from ser_model.inference import sliding_windows
from ser_model.metrics import probability_column
from ser_model.vad import FrameLevels, speech_regions

__all__ = [
    "SegmentConfig",
    "Segment",
    "AudioSource",
    "FileSource",
    "ArraySource",
    "WindowScorer",
    "probability_column",
    "read_at_rate",
    "iter_blocks",
    "merge_windows",
    "segment_recording",
    "segment_file",
    "segment_records",
]


Seconds = bounded(float, "a positive number of seconds", gt=0.0)
Percentile = bounded(float, "a percentile in [0, 100]", ge=0.0, le=100.0)


@config_dataclass
class SegmentConfig:
    """How a long recording is cut and scored (module docstring; the VAD's fields are explained
    in `ser_model.vad`). Times in seconds, levels in dB.

    window_s, hop_s: longest stretch the model sees at once, and the step between windows of a
    longer speech region. min_segment_s: a change of label inside a region lasting less than this
    is absorbed by a neighbour. frame_s, frame_hop_s: VAD frames. min_speech_s, min_silence_s,
    pad_s: shortest region kept, shortest pause that splits two regions, padding of each region.
    noise_margin_db, dynamic_range_db, floor_dbfs, hysteresis_db, noise_percentile,
    level_percentile, context_s: the VAD threshold. block_s: seconds read per block in the first
    pass. batch_size: windows per model call.
    """

    window_s: Seconds = 4.0
    hop_s: Seconds = 2.0
    min_segment_s: NonNegative = 1.0
    frame_s: Seconds = WIN_SECONDS
    frame_hop_s: Seconds = HOP_SECONDS
    min_speech_s: NonNegative = 0.25
    min_silence_s: NonNegative = 0.5
    pad_s: NonNegative = 0.1
    noise_margin_db: NonNegative = 12.0
    dynamic_range_db: NonNegative = 35.0
    floor_dbfs: bounded(float, "<= 0 dB", le=0.0) = -80.0
    hysteresis_db: NonNegative = 6.0
    noise_percentile: Percentile = 10.0
    level_percentile: Percentile = 95.0
    context_s: Seconds = 30.0
    block_s: Seconds = 30.0
    batch_size: PositiveInt = 16

    def __post_init__(self) -> None:
        w = "SegmentConfig"
        require(
            self.hop_s <= self.window_s,
            f"{w}.hop_s",
            f"got {self.hop_s} > window_s {self.window_s}; windows would leave gaps",
        )
        require(
            self.frame_hop_s <= self.frame_s,
            f"{w}.frame_hop_s",
            f"got {self.frame_hop_s} > frame_s {self.frame_s}",
        )
        require(
            self.block_s >= self.frame_s,
            f"{w}.block_s",
            f"got {self.block_s}, expected at least frame_s {self.frame_s}",
        )
        require(
            self.noise_percentile < self.level_percentile,
            f"{w}.noise_percentile",
            f"got {self.noise_percentile}, expected below level_percentile {self.level_percentile}",
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def with_overrides(self, overrides: dict[str, Any]) -> SegmentConfig:
        """New validated settings with fields replaced by name: ``{"window_s": 6, "min_silence_s": 0.3}``."""
        names = [f.name for f in dataclasses.fields(self)]
        for key in overrides:
            require(key in names, "SegmentConfig.with_overrides", f"unknown key {key!r}; valid keys: {names}")
        return dataclasses.replace(self, **overrides)


@dataclass(frozen=True)
class Segment:
    """A stretch of speech with one emotion: [start_s, end_s) in the recording, the most probable
    label and the class probabilities (C,) in the scorer's label order."""

    start_s: float
    end_s: float
    label: str
    probabilities: tuple[float, ...]


# ---------------------------------------------------------------------------- sources


class AudioSource(Protocol):
    """A recording read in pieces: mono float32 at its own rate."""

    name: str
    sample_rate: int
    frames: int

    def read(self, start: int, stop: int) -> np.ndarray:
        """Samples [start, stop) down-mixed to mono, (stop − start,) float32."""


def _finite(samples: np.ndarray, name: str, start: int, rate: int) -> np.ndarray:
    if not np.isfinite(samples).all():
        bad = int(np.flatnonzero(~np.isfinite(samples).reshape(len(samples), -1).all(axis=1))[0])
        raise AudioDecodeError(
            f"{name}: the audio holds NaN or infinite samples (the first at {(start + bad) / rate:.3f} s)"
        )
    return samples


def _check_rate(rate: int, name: str) -> None:
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise AudioDecodeError(
            f"{name}: sample rate {rate} Hz is outside [{MIN_SAMPLE_RATE}, {MAX_SAMPLE_RATE}] Hz"
        )


class FileSource:
    """An audio file (any format soundfile reads) opened for reading in pieces; a context manager.

    Raises `AudioDecodeError` naming the file when it cannot be opened, holds no samples, does not
    state its length in its header, or (when read) holds samples that are not finite."""

    def __init__(self, path: str | os.PathLike):
        self.name = os.fsdecode(path)
        try:
            self._file = soundfile.SoundFile(os.fsencode(path))
        except (OSError, RuntimeError, soundfile.LibsndfileError) as exc:
            raise AudioDecodeError(f"{self.name}: cannot decode audio ({exc})") from exc
        self.sample_rate, self.frames = int(self._file.samplerate), int(self._file.frames)
        if self.frames == UNKNOWN_FRAMES:
            self.close()
            raise AudioDecodeError(
                f"{self.name}: the file's header does not state its length; expected a WAV or FLAC file whose header does"
            )
        if self.frames == 0:
            self.close()
            raise AudioDecodeError(f"{self.name}: the file holds no samples; expected at least one")
        _check_rate(self.sample_rate, self.name)

    def read(self, start: int, stop: int) -> np.ndarray:
        try:
            self._file.seek(start)
            data = self._file.read(stop - start, dtype="float32", always_2d=True)
        except (RuntimeError, soundfile.LibsndfileError) as exc:
            raise AudioDecodeError(
                f"{self.name}: cannot decode audio at {start / self.sample_rate:.3f} s ({exc})"
            ) from exc
        return to_mono(_finite(data, self.name, start, self.sample_rate))

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> FileSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ArraySource:
    """A waveform in memory, (N,) or (N, channels), at `sample_rate` Hz."""

    def __init__(self, samples: np.ndarray, sample_rate: int, name: str = "input"):
        samples = np.asarray(samples, dtype=np.float32)
        self.name, self.sample_rate = name, int(sample_rate)
        if (
            samples.ndim not in (1, 2)
            or samples.shape[0] == 0
            or (samples.ndim == 2 and samples.shape[1] == 0)
        ):
            raise AudioDecodeError(
                f"{name}: got audio of shape {samples.shape}; expected (samples,) or (samples, channels) with samples ≥ 1"
            )
        _check_rate(self.sample_rate, name)
        self._mono = to_mono(_finite(samples, name, 0, self.sample_rate))
        self.frames = len(self._mono)

    def read(self, start: int, stop: int) -> np.ndarray:
        return self._mono[start:stop]


def iter_blocks(source: AudioSource, block: int) -> Iterator[np.ndarray]:
    """Consecutive mono blocks of at most `block` samples covering the source."""
    for start in range(0, source.frames, block):
        yield source.read(start, min(source.frames, start + block))


def read_at_rate(source: AudioSource, start: int, stop: int, target_sr: int) -> np.ndarray:
    """Samples [start, stop) of the source (its own rate) at `target_sr`: the samples
    [round(start·target/rate), … + ⌈(stop − start)·target/rate⌉) of the whole recording resampled at once.

    Resampling reads 10 ms more on each side (beyond the sinc kernel's reach), from a sample on the
    rate pair's common grid (a multiple of rate/gcd(rate, target)), resamples, and cuts the extra off."""
    rate = source.sample_rate
    if rate == target_sr:
        return source.read(start, stop)
    g = math.gcd(rate, target_sr)
    step_in, step_out = rate // g, target_sr // g
    first = max(0, start - math.ceil(0.010 * rate)) // step_in * step_in
    last = min(source.frames, stop + math.ceil(0.010 * rate))
    out = resample(source.read(first, last), rate, target_sr)
    offset = round(start * target_sr / rate) - first // step_in * step_out
    return out[offset : offset + math.ceil((stop - start) * target_sr / rate)]


# ---------------------------------------------------------------------------- scoring and merging


class WindowScorer(Protocol):
    """What scores windows: class probabilities of prepared mono waveforms at the model's rate."""

    labels: tuple[str, ...]
    sample_rate: int
    trim_db: float | None

    def window_probabilities(self, waves: Sequence[np.ndarray]) -> np.ndarray:
        """[(N_i,)] float32 at `sample_rate`, already trimmed → (len(waves), C) probabilities."""


def merge_windows(
    spans: np.ndarray, probabilities: np.ndarray, labels: Sequence[str], min_segment_s: float
) -> list[Segment]:
    """Segments of one speech region from its windows' class probabilities: the merging rule of
    every path.

    spans (W, 2) window [start, end) seconds covering the region; probabilities (W, C). The window
    edges cut the region into cells; a cell's probability is the mean over the windows covering
    it, p(cell) = (1/|W_cell|) Σ_{w ∋ cell} p_w. Consecutive cells with the same most probable
    class form a run. While a run is shorter than `min_segment_s` and the region has more than
    one, the shortest joins the neighbour whose probabilities are nearest (L1; the left one on a
    tie), and neighbours left with the same label join. A segment's probability is the
    duration-weighted mean of its cells', p(seg) = Σ d_i p_i / Σ d_i; its label the argmax.
    """
    spans = np.asarray(spans, dtype=np.float64).reshape(-1, 2)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if len(spans) == 0 or probabilities.shape != (len(spans), len(labels)):
        raise ValueError(
            f"merge_windows: got {len(spans)} spans and probabilities of shape {probabilities.shape}; expected (W ≥ 1, {len(labels)})"
        )
    edges = np.unique(spans.ravel())
    runs: list[list[Any]] = []  # [start, end, duration-weighted probability sum]
    for start, end in zip(edges[:-1], edges[1:]):
        covering = (spans[:, 0] <= start) & (spans[:, 1] >= end)
        if not covering.any():  # a gap between windows: not part of the region
            continue
        p = probabilities[covering].mean(axis=0)
        if runs and runs[-1][1] == start and np.argmax(runs[-1][2]) == np.argmax(p):
            runs[-1][1], runs[-1][2] = end, runs[-1][2] + (end - start) * p
        else:
            runs.append([start, end, (end - start) * p])

    def mean(run: list[Any]) -> np.ndarray:
        return run[2] / (run[1] - run[0])

    while len(runs) > 1:
        short = min(range(len(runs)), key=lambda i: runs[i][1] - runs[i][0])
        if runs[short][1] - runs[short][0] >= min_segment_s:
            break
        neighbours = [i for i in (short - 1, short + 1) if 0 <= i < len(runs)]
        target = min(neighbours, key=lambda i: np.abs(mean(runs[i]) - mean(runs[short])).sum())
        first, second = sorted((short, target))
        runs[first] = [runs[first][0], runs[second][1], runs[first][2] + runs[second][2]]
        del runs[second]
        i = 0
        while i < len(runs) - 1:  # neighbours that now agree join
            if runs[i][1] == runs[i + 1][0] and np.argmax(mean(runs[i])) == np.argmax(mean(runs[i + 1])):
                runs[i] = [runs[i][0], runs[i + 1][1], runs[i][2] + runs[i + 1][2]]
                del runs[i + 1]
            else:
                i += 1
    return [
        Segment(float(s), float(e), labels[int(np.argmax(p / (e - s)))], tuple(float(v) for v in p / (e - s)))
        for s, e, p in runs
    ]


def _region_windows(start: int, stop: int, window: int, hop: int) -> list[tuple[int, int]]:
    """Windows [(first, last)] in source samples of the region [start, stop)."""
    return [(start + a, start + b) for a, b in sliding_windows(stop - start, window, hop)]


def segment_recording(
    source: AudioSource,
    scorer: WindowScorer,
    config: SegmentConfig | None = None,
    progress: Callable[[float], None] | None = None,
) -> list[Segment]:
    """Segments of a recording (module docstring, steps 2 to 5), in time order; none when the VAD
    finds no speech. `progress(seconds)` is called as each pass advances (2 × the duration in all)."""
    config = config or SegmentConfig()
    rate = source.sample_rate
    frame, hop = max(1, round(config.frame_s * rate)), max(1, round(config.frame_hop_s * rate))
    levels = FrameLevels(frame, hop)
    for samples in iter_blocks(source, max(frame, round(config.block_s * rate))):
        levels.push(samples)
        if progress:
            progress(len(samples) / rate)
    duration = source.frames / rate
    regions = speech_regions(levels.levels(), config, duration, frame_s=frame / rate, hop_s=hop / rate)
    window, window_hop = max(1, round(config.window_s * rate)), max(1, round(config.hop_s * rate))
    plan = []  # (region index, first, last) in source samples
    for r, (start_s, end_s) in enumerate(regions):
        first, last = round(start_s * rate), min(source.frames, round(end_s * rate))
        plan += [(r, a, b) for a, b in _region_windows(first, last, window, window_hop)]
    probabilities = np.zeros((len(plan), len(scorer.labels)))
    scored_until = 0.0
    for begin in range(0, len(plan), config.batch_size):
        chunk = plan[begin : begin + config.batch_size]
        waves = [
            trim_silence(read_at_rate(source, a, b, scorer.sample_rate), scorer.sample_rate, scorer.trim_db)
            for _, a, b in chunk
        ]
        scored = scorer.window_probabilities(waves)
        for row in np.flatnonzero(~np.isfinite(scored).all(axis=1)):
            raise AudioDecodeError(
                f"the window at {chunk[row][1] / rate:.2f} s: the model's features overflow on this audio "
                f"(peak amplitude {float(np.max(np.abs(waves[row]))):.3g}); expected samples scaled to [-1, 1]"
            )
        probabilities[begin : begin + len(chunk)] = scored
        if progress:
            progress(chunk[-1][2] / rate - scored_until)
            scored_until = chunk[-1][2] / rate
    if progress:
        progress(duration - scored_until)
    segments: list[Segment] = []
    owners = np.array([r for r, _, _ in plan], dtype=np.int64)
    spans = np.array([(a / rate, b / rate) for _, a, b in plan], dtype=np.float64).reshape(-1, 2)
    for r in range(len(regions)):
        mine = owners == r
        segments += merge_windows(spans[mine], probabilities[mine], scorer.labels, config.min_segment_s)
    return segments


def segment_file(
    path: str | os.PathLike, scorer: WindowScorer, config: SegmentConfig | None = None, **kwargs: Any
) -> list[Segment]:
    """`segment_recording` of an audio file, read in blocks."""
    with FileSource(path) as source:
        return segment_recording(source, scorer, config, **kwargs)


def segment_records(
    segments: Sequence[Segment], labels: Sequence[str], min_confidence: float = 0.0
) -> list[dict[str, Any]]:
    """Segments as flat records: ``start_s``, ``end_s`` (rounded to the millisecond), ``label``
    ("uncertain" when the top probability is below ``min_confidence``), ``confidence`` and one
    ``p_<label>`` per class: what every path prints or answers."""
    records = []
    for s in segments:
        answer = decision(s.probabilities, labels, min_confidence)
        records.append(
            {
                "start_s": round(s.start_s, 3),
                "end_s": round(s.end_s, 3),
                "label": answer["label"],
                "confidence": answer["confidence"],
                **{probability_column(c): p for c, p in zip(labels, s.probabilities)},
            }
        )
    return records
