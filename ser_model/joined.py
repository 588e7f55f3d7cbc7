"""Long recordings with a known truth, built by joining held-out utterances, and how well the
segment pipeline (`ser_model.segments`) recovers it (`ser evaluate --segments`, benchmarks/segments.py).

A joined recording is: a gap, an utterance, a gap, an utterance, ..., a gap. Each utterance is
first trimmed of its leading and trailing silence (`trim_silence` at ``REFERENCE_TRIM_DB``, 40 dB
under its loudest frame: the rule the `cpu-fbank` preset trains with), so its span in the
recording is where its speech is: the reference boundaries. A gap is ``gap_s`` of digital silence, or of white noise whose level lies
``noise_below_speech_db`` under the mean level of the recording's (trimmed) utterances.

Scores, against the same utterances scored one by one (the whole trimmed utterance each, as
`ser evaluate` scores it):
- segment-level WA / UA weighted by duration (`duration_weighted_metrics`): each second of
  reference speech counts once, labelled by the segment covering it (uncovered: an error);
- the per-utterance UA of the same utterances, counted per utterance and weighted by duration;
- boundary errors (`boundary_errors`): each reference onset and offset against the nearest
  segment start or end;
- how many segments each recording gives, and whether each utterance's middle lies in one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ser_model.audio import load_audio, trim_silence
from ser_model.metrics import boundary_errors, classification_metrics, duration_weighted_metrics
from ser_model.segments import ArraySource, Segment, SegmentConfig, WindowScorer, segment_recording

__all__ = ["GAP_KINDS", "Span", "JoinedRecording", "join_utterances", "build_joined", "score_joined"]

GAP_KINDS = ("silence", "noise")
REFERENCE_TRIM_DB = 40.0
"""Where a reference utterance starts and ends: frames within this many dB of its loudest frame."""


@dataclass(frozen=True)
class Span:
    """A reference utterance in a joined recording: [start_s, end_s), its class index and id."""

    start_s: float
    end_s: float
    label: int
    utt_id: str


@dataclass(frozen=True)
class JoinedRecording:
    """Mono samples at `sample_rate` and the utterances' spans, in time order."""

    samples: np.ndarray
    sample_rate: int
    utterances: tuple[Span, ...]


def mean_level_db(wave: np.ndarray) -> float:
    """Mean-square level in dB re full scale: 10 log10((1/N) Σ x² + 1e-12)."""
    return float(10 * np.log10(np.mean(np.square(wave, dtype=np.float64)) + 1e-12))


def join_utterances(
    waves: Sequence[np.ndarray],
    labels: Sequence[int],
    utt_ids: Sequence[str],
    sample_rate: int,
    *,
    gap_s: float = 1.5,
    gap: str = "silence",
    noise_below_speech_db: float = 35.0,
    seed: int = 0,
) -> JoinedRecording:
    """Join trimmed utterances (mono, at `sample_rate`; trim them first) with gaps (module docstring)."""
    if gap not in GAP_KINDS:
        raise ValueError(f"join_utterances: gap {gap!r}, expected one of {GAP_KINDS}")
    if not len(waves) == len(labels) == len(utt_ids) or not waves:
        raise ValueError(
            f"join_utterances: {len(waves)} waves, {len(labels)} labels, {len(utt_ids)} ids; expected as many, at least one"
        )
    rng = np.random.default_rng(seed)
    n_gap = int(round(gap_s * sample_rate))
    noise_rms = 10 ** ((np.mean([mean_level_db(w) for w in waves]) - noise_below_speech_db) / 20)

    def gap_samples() -> np.ndarray:
        if gap == "silence":
            return np.zeros(n_gap, dtype=np.float32)
        return (noise_rms * rng.standard_normal(n_gap)).astype(np.float32)

    pieces, spans, cursor = [gap_samples()], [], n_gap
    for wave, label, utt_id in zip(waves, labels, utt_ids):
        pieces += [np.asarray(wave, dtype=np.float32), gap_samples()]
        spans.append(Span(cursor / sample_rate, (cursor + len(wave)) / sample_rate, int(label), utt_id))
        cursor += len(wave) + n_gap
    return JoinedRecording(np.concatenate(pieces), sample_rate, tuple(spans))


def build_joined(
    items: Sequence[tuple[str, int, str]],
    sample_rate: int,
    *,
    trim_db: float = REFERENCE_TRIM_DB,
    per_recording: int = 8,
    gap_s: float = 1.5,
    gap: str = "silence",
    noise_below_speech_db: float = 35.0,
    seed: int = 0,
) -> list[JoinedRecording]:
    """Joined recordings of `per_recording` utterances each from [(audio path, class index, utt_id)],
    shuffled by `seed` (speakers and emotions mixed); the last recording takes what remains. Each
    file is decoded at `sample_rate` and trimmed at `trim_db` before joining."""
    if per_recording < 1:
        raise ValueError(f"build_joined: per_recording {per_recording}, expected at least 1")
    order = np.random.default_rng(seed).permutation(len(items))
    recordings = []
    for r, first in enumerate(range(0, len(order), per_recording)):
        chosen = [items[i] for i in order[first : first + per_recording]]
        waves = [trim_silence(load_audio(path, sample_rate), sample_rate, trim_db) for path, _, _ in chosen]
        recordings.append(
            join_utterances(
                waves,
                [c for _, c, _ in chosen],
                [u for _, _, u in chosen],
                sample_rate,
                gap_s=gap_s,
                gap=gap,
                noise_below_speech_db=noise_below_speech_db,
                seed=seed * 100003 + r,
            )
        )
    return recordings


def score_joined(
    recordings: Sequence[JoinedRecording],
    scorer: WindowScorer,
    utterance_probabilities: Callable[[list[np.ndarray]], np.ndarray],
    config: SegmentConfig | None = None,
) -> dict[str, Any]:
    """Segment-level and per-utterance scores of `recordings` (module docstring).

    `utterance_probabilities(waves)` scores whole trimmed utterances at the recordings' rate
    (`Predictor.probabilities`); `scorer` scores the segment pipeline's windows."""
    labels = list(scorer.labels)
    n = len(labels)
    truth, predicted, per_utt_spans, errors = [], [], [], []
    y_true, y_pred, counts, middles_inside = [], [], [], 0
    segments_per_recording: list[list[Segment]] = []
    offset = 0.0
    for recording in recordings:
        segments = segment_recording(ArraySource(recording.samples, recording.sample_rate), scorer, config)
        segments_per_recording.append(segments)
        waves = [
            recording.samples[
                round(u.start_s * recording.sample_rate) : round(u.end_s * recording.sample_rate)
            ]
            for u in recording.utterances
        ]
        utt_labels = np.argmax(utterance_probabilities(waves), axis=1)
        for u, p in zip(recording.utterances, utt_labels):
            truth.append((offset + u.start_s, offset + u.end_s, u.label))
            per_utt_spans.append((offset + u.start_s, offset + u.end_s, int(p)))
            y_true.append(u.label)
            y_pred.append(int(p))
            middle = (u.start_s + u.end_s) / 2
            middles_inside += sum(s.start_s <= middle < s.end_s for s in segments) == 1
        predicted += [(offset + s.start_s, offset + s.end_s, labels.index(s.label)) for s in segments]
        errors.append(
            boundary_errors(
                [(u.start_s, u.end_s) for u in recording.utterances], [(s.start_s, s.end_s) for s in segments]
            )
        )
        counts.append(len(segments))
        offset += len(recording.samples) / recording.sample_rate
    all_errors = np.concatenate(errors)
    segment_level = duration_weighted_metrics(truth, predicted, n, labels)
    return {
        "recordings": len(recordings),
        "utterances": len(truth),
        "audio_s": offset,
        "segment": segment_level,
        "utterance": classification_metrics(y_true, y_pred, n, labels),
        "utterance_duration_weighted": duration_weighted_metrics(truth, per_utt_spans, n, labels),
        "boundary_error_s": {
            "median": float(np.median(all_errors)),
            "mean": float(np.mean(all_errors)),
            "p90": float(np.percentile(all_errors, 90)),
            "n": int(all_errors.size),
        },
        "segments_per_recording": {
            "mean": float(np.mean(counts)),
            "min": int(min(counts)),
            "max": int(max(counts)),
        },
        "utterances_per_recording": float(len(truth) / len(recordings)),
        "middles_in_one_segment": middles_inside / len(truth),
        "missed_speech_share": float(sum(segment_level["missed_s"]) / segment_level["speech_s"]),
    }
