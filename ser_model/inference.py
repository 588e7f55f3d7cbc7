"""Batch inference from a `save_pretrained` folder: any sample rate, any channel count, any length.

One inference policy for every path (validation, `ser evaluate`, `ser predict`, the MLflow pyfunc,
and the ONNX graph fed by `prepare_waveform`): each input is down-mixed to mono, resampled to the
model's rate and silence-trimmed (`ModelConfig.trim_db`), and the model sees the whole utterance in
one pass. Only inputs longer than the window (default `EVAL_MAX_SECONDS`, 60 s, which evaluation
centre-crops to) are cut into overlapping windows (start t·hop, the last one aligned to the end so that
every sample is covered); their class probabilities are the mean of the windows' softmax:

    p(c | x) = (1/W) Σ_w softmax(z_w)_c

Calibration. The probabilities are the calibrated ones, softmax(z / T) with the model folder's
temperature T (`ser_model.calibration`, 1 for a folder without one); an answer's ``confidence`` is the
top probability, and with ``min_confidence`` P > 0 an answer below P is labelled ``"uncertain"``
(its probabilities kept).

Whole utterances rather than training-crop windows: the model is selected on whole validation
utterances, and averaging 3 s windows scored the same RAVDESS model differently from `ser evaluate`.

Speakers. A model trained with speaker-level normalisation (``model.fbank_norm = "speaker"``,
`ser_model.speaker_norm`) needs the speaker of every input: each speaker's log-mel statistics come
from all of that speaker's inputs of the call (whole, prepared), and each window is normalised by
its input's speaker's. Without speakers such a model refuses to score (`MissingSpeakersError`), it
never falls back to per-utterance statistics; other models accept speakers and ignore them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ser_model.audio import AudioDecodeError, load_audio, resample, to_mono, trim_silence
from ser_model.calibration import decision, read_temperature
from ser_model.data import EVAL_MAX_SECONDS
from ser_model.ensemble import SEREnsemble, load_model
from ser_model.fbank_backbone import LogMelStatistics
from ser_model.model import SERModel
from ser_model.speaker_norm import require_speakers, row_statistics, speaker_statistics

__all__ = ["Predictor", "sliding_windows", "prepare_waveform"]


def prepare_waveform(wave: np.ndarray, model_config: Any) -> np.ndarray:
    """What the model sees of a mono waveform at the model's rate: silence-trimmed by
    ``model_config.trim_db`` (a ModelConfig), the same as training and evaluation do on decoding."""
    return trim_silence(np.asarray(wave, dtype=np.float32), model_config.sample_rate, model_config.trim_db)


def sliding_windows(n_samples: int, window: int, hop: int) -> list[tuple[int, int]]:
    """[(start, end)] covering [0, n_samples): starts 0, hop, 2·hop, … and a last window ending at
    n_samples; a single (0, n_samples) when the input fits one window."""
    if window < 1 or not 1 <= hop <= window:
        raise ValueError(f"expected window >= 1 and 1 <= hop <= window, got window={window}, hop={hop}")
    if n_samples <= window:
        return [(0, n_samples)]
    starts = list(range(0, n_samples - window + 1, hop))
    if starts[-1] + window < n_samples:
        starts.append(n_samples - window)
    return [(s, s + window) for s in starts]


class Predictor:
    """Class probabilities for waveforms or files, from a trained `SERModel`.

    window_seconds: longest stretch the model sees at once (default EVAL_MAX_SECONDS: the whole
    utterance, as in evaluation); overlap: fraction shared by consecutive windows, in [0, 1);
    temperature: T > 0 of the calibrated probabilities softmax(z / T) (`from_pretrained` reads the folder's).
    """

    def __init__(
        self,
        model: SERModel | SEREnsemble,
        *,
        window_seconds: float | None = None,
        overlap: float = 0.5,
        batch_size: int = 8,
        device: str | torch.device = "cpu",
        temperature: float = 1.0,
    ):
        if window_seconds is not None and not window_seconds > 0:
            raise ValueError(
                f"window_seconds must be positive (or None for the training crop), got {window_seconds}"
            )
        if not 0.0 <= overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {overlap}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = float(temperature)
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.sample_rate = model.config.model.sample_rate
        seconds = window_seconds or EVAL_MAX_SECONDS
        self.window = max(1, int(round(seconds * self.sample_rate)))
        self.hop = max(1, int(round(self.window * (1.0 - overlap))))
        self.batch_size = batch_size

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, **kwargs: Any) -> Predictor:
        """Load a checkpoint folder: one model (`config.json` + `model.safetensors` + `labels.json`)
        or a seed ensemble (`ser_model.ensemble`, scored by its mean class probability), with the
        folder's temperature (`ser_model.calibration.CALIBRATION_FILE`)."""
        return cls(load_model(folder), temperature=read_temperature(folder), **kwargs)

    @property
    def labels(self) -> tuple[str, ...]:
        return self.model.labels

    @property
    def trim_db(self) -> float | None:
        """Silence trimming of every input (ModelConfig.trim_db), for `ser_model.segments`."""
        return self.model.config.model.trim_db

    @property
    def uses_speakers(self) -> bool:
        """Whether the model needs the speaker of every input (speaker-level normalisation)."""
        return self.model.config.model.uses_speaker_statistics

    @torch.no_grad()
    def window_probabilities(
        self, waves: Sequence[np.ndarray], speaker_stats: LogMelStatistics | None = None
    ) -> np.ndarray:
        """Prepared mono waveforms at the model rate, each scored whole → (len(waves), C) softmax
        calibrated probabilities softmax(z / T); `batch_size` at a time, in the given order, zero-padded to the batch's longest.
        ``speaker_stats``: for a speaker-normalised model, each waveform's speaker statistics (len(waves), n_mels)."""
        if speaker_stats is None:
            require_speakers(self.model.config.model, None, len(waves), "Predictor")
        out = np.zeros((len(waves), len(self.labels)), dtype=np.float64)
        for start in range(0, len(waves), self.batch_size):
            chosen = waves[start : start + self.batch_size]
            lengths = torch.tensor([len(w) for w in chosen], dtype=torch.long)
            batch = torch.zeros(len(chosen), int(lengths.max()), dtype=torch.float32)
            for row, w in enumerate(chosen):
                batch[row, : len(w)] = torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32))
            stats = None
            if speaker_stats is not None and self.uses_speakers:
                stats = speaker_stats.rows(range(start, start + len(chosen))).to(self.device)
            logits = self.model(batch.to(self.device), lengths.to(self.device), stats).logits  # (B, C)
            calibrated = torch.softmax(logits.float() / self.temperature, dim=1)
            out[start : start + len(chosen)] = calibrated.cpu().numpy()
        return out

    def probabilities(self, waves: Sequence[np.ndarray], speakers: Sequence[str] | None = None) -> np.ndarray:
        """Mono waveforms at the model rate [(N_i,)] → class probabilities (len(waves), C); each is
        passed through `prepare_waveform` first. ``speakers``: the speaker of each input (module docstring)."""
        require_speakers(self.model.config.model, speakers, len(waves), "Predictor")
        prepared, pieces = [], []  # pieces: (input index, window)
        for item, wave in enumerate(waves):
            if len(wave) == 0:
                raise AudioDecodeError(f"input {item} holds no samples; expected at least one")
            wave = prepare_waveform(wave, self.model.config.model)
            prepared.append(wave)
            pieces += [(item, wave[s:e]) for s, e in sliding_windows(len(wave), self.window, self.hop)]
        order = sorted(range(len(pieces)), key=lambda i: -len(pieces[i][1]))  # longest first: least padding
        stats = None
        if self.uses_speakers:
            by_speaker = speaker_statistics(self.model.backbone, prepared, speakers, device=self.device)
            stats = row_statistics(by_speaker, [speakers[pieces[i][0]] for i in order])
        probs = self.window_probabilities([pieces[i][1] for i in order], stats)
        sums = np.zeros((len(waves), len(self.labels)), dtype=np.float64)
        counts = np.zeros(len(waves), dtype=np.int64)
        for i, p in zip(order, probs):
            sums[pieces[i][0]] += p
            counts[pieces[i][0]] += 1
        for item in np.flatnonzero(~np.isfinite(sums).all(axis=1)):
            peak = float(np.max(np.abs(waves[item])))
            raise AudioDecodeError(
                f"input {item}: the model's features overflow on this audio (peak amplitude {peak:.3g}); "
                "expected samples scaled to [-1, 1]"
            )
        return sums / counts[:, None]

    def _decisions(self, probs: np.ndarray, min_confidence: float) -> list[dict[str, Any]]:
        return [decision(p, self.labels, min_confidence) for p in probs]

    def predict_arrays(
        self,
        items: Sequence[tuple[np.ndarray, int]],
        speakers: Sequence[str] | None = None,
        min_confidence: float = 0.0,
    ) -> list[dict[str, Any]]:
        """[(samples (N,) or (N, channels), sample rate)] → [{"label", "confidence", "probabilities": {label: p}}],
        "uncertain" below ``min_confidence``. ``speakers``: the speaker of each item (needed by a
        speaker-normalised model, module docstring)."""
        require_speakers(self.model.config.model, speakers, len(items), "Predictor")
        waves = []
        for index, (array, sr) in enumerate(items):
            array = np.asarray(array, dtype=np.float32)
            if array.size == 0:
                raise AudioDecodeError(
                    f"input {index} holds no samples (shape {array.shape}); expected at least one"
                )
            if not np.isfinite(array).all():
                raise AudioDecodeError(f"input {index}: the audio holds NaN or infinite samples")
            try:
                waves.append(resample(to_mono(array), int(sr), self.sample_rate))
            except AudioDecodeError as err:
                raise AudioDecodeError(f"input {index}: {err}") from err
        return self._decisions(self.probabilities(waves, speakers), min_confidence)

    def predict_files(
        self,
        paths: Sequence[str | os.PathLike],
        speakers: Sequence[str] | None = None,
        min_confidence: float = 0.0,
    ) -> list[dict[str, Any]]:
        """Audio files (any format soundfile reads) → [{"label", "confidence", "probabilities": {label: p}}],
        "uncertain" below ``min_confidence``. ``speakers``: the speaker of each file (needed by a
        speaker-normalised model, module docstring)."""
        require_speakers(self.model.config.model, speakers, len(paths), "Predictor")
        return self._decisions(
            self.probabilities([load_audio(Path(p), self.sample_rate) for p in paths], speakers),
            min_confidence,
        )
