"""Audio decoding for training and inference: soundfile in, float32 mono at the model's rate out.

`torchaudio.load` needs torchcodec, so decoding goes through soundfile; resampling uses the
band-limited sinc interpolation of `torchaudio.functional.resample` (Hann window, width 6),
with the kernel built once per (source rate, target rate) pair.
"""

from __future__ import annotations

import functools
import io
import math
import os

import numpy as np
import soundfile
import torch
import torchaudio

from ser_model.backbone_facts import HOP_SECONDS, WIN_SECONDS
from ser_model.errors import AudioDecodeError

__all__ = [
    "AudioDecodeError",
    "AudioTooLongError",
    "load_audio",
    "decode_audio_bytes",
    "to_mono",
    "resample",
    "speed_perturb",
    "resampling_kernel_size",
    "trim_silence",
    "MIN_SAMPLE_RATE",
    "MAX_SAMPLE_RATE",
]

#: sample rates accepted from files and callers (below: an absurd header that would be upsampled
#: by a huge factor; above: no audio format in use)
MIN_SAMPLE_RATE = 1000
MAX_SAMPLE_RATE = 768000
#: the sinc kernel of a rate pair may hold at most this many coefficients (16 MB of float32); every
#: common rate needs under 10^5, while a rate sharing no factor with the target (e.g. 48001 Hz) would
#: need gigabytes
MAX_KERNEL_SIZE = 2**22


#: soundfile's frame count of a file whose header does not state its length (libsndfile's SF_COUNT_MAX)
UNKNOWN_FRAMES = 2**63 - 1


class AudioTooLongError(AudioDecodeError):
    """Audio longer than the limit the caller set (a served model's seconds per row)."""


def to_mono(wave: np.ndarray) -> np.ndarray:
    """Down-mix to one channel by averaging the channels.

    x_mono[n] = (1/C) Σ_c x[n, c].   (N,) or (N, C) → (N,) float32.
    """
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim == 1:
        return wave
    if wave.ndim != 2 or wave.shape[1] == 0:
        raise AudioDecodeError(
            f"expected audio of shape (samples,) or (samples, channels ≥ 1), got {wave.shape}"
        )
    return wave.mean(axis=1, dtype=np.float32)


@functools.lru_cache(maxsize=16)
def _resampler(orig_sr: int, target_sr: int) -> torchaudio.transforms.Resample:
    """The cached sinc kernel of `torchaudio.functional.resample` for one rate pair."""
    return torchaudio.transforms.Resample(orig_sr, target_sr)


def resampling_kernel_size(
    orig_sr: int, target_sr: int, lowpass_filter_width: int = 6, rolloff: float = 0.99
) -> int:
    """Coefficients of the sinc kernel `torchaudio.functional.resample` builds for a rate pair.

    With g = gcd(orig, target), o = orig/g, t = target/g and
    w = ceil(lowpass_filter_width · o / (rolloff · min(o, t))), the kernel is (t, o + 2w).
    """
    g = math.gcd(int(orig_sr), int(target_sr))
    o, t = int(orig_sr) // g, int(target_sr) // g
    width = math.ceil(lowpass_filter_width * o / (rolloff * min(o, t)))
    return t * (o + 2 * width)


def resample(wave: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Band-limited resampling of a mono waveform, (N,) at orig_sr → (ceil(N·target/orig),) at target_sr.

    Same result as `torchaudio.functional.resample(x, orig_sr, target_sr)`. Rates outside
    [MIN_SAMPLE_RATE, MAX_SAMPLE_RATE], and rate pairs whose kernel would exceed MAX_KERNEL_SIZE
    coefficients, raise `AudioDecodeError` instead of exhausting memory.
    """
    for name, rate in (("source", orig_sr), ("target", target_sr)):
        if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
            raise AudioDecodeError(
                f"{name} sample rate {rate} Hz is outside [{MIN_SAMPLE_RATE}, {MAX_SAMPLE_RATE}] Hz"
            )
    if orig_sr == target_sr:
        return np.asarray(wave, dtype=np.float32)
    size = resampling_kernel_size(orig_sr, target_sr)
    if size > MAX_KERNEL_SIZE:
        raise AudioDecodeError(
            f"resampling {orig_sr} Hz → {target_sr} Hz needs a sinc kernel of {size} coefficients (rates sharing "
            f"almost no factor), more than {MAX_KERNEL_SIZE}; expected a common rate such as 8000, 16000, 22050, 44100 or 48000 Hz"
        )
    with torch.inference_mode():
        out = _resampler(int(orig_sr), int(target_sr))(
            torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))
        )
    return out.numpy()


def speed_perturb(wave: np.ndarray, factor: float, sample_rate: int) -> np.ndarray:
    """The waveform played ``factor`` times as fast, tempo and pitch together (a tape at another
    speed; Ko et al. 2015, "Audio augmentation for speech recognition"): read as if sampled at
    round(sample_rate · factor) Hz and resampled to ``sample_rate``, (N,) → (≈ N / factor,).
    ``factor`` 1 returns the wave itself."""
    if factor == 1.0:
        return wave
    return resample(wave, round(sample_rate * factor), sample_rate)


def load_audio(path: str | os.PathLike, target_sr: int = 16000) -> np.ndarray:
    """Decode an audio file to a float32 mono waveform at `target_sr`, shape (N,).

    Any channel count (averaged) and any sample rate (resampled), any file name the OS holds
    (bytes that are not UTF-8 included). Raises `AudioDecodeError` naming the file when it is
    missing, undecodable, empty or not finite.
    """
    try:
        data, sr = soundfile.read(os.fsencode(path), dtype="float32", always_2d=True)
    except (OSError, RuntimeError, soundfile.LibsndfileError) as exc:
        raise AudioDecodeError(f"{path}: cannot decode audio ({exc})") from exc
    if data.shape[0] == 0:
        raise AudioDecodeError(f"{path}: the file holds no samples; expected at least one")
    if not np.isfinite(data).all():
        raise AudioDecodeError(f"{path}: the audio holds NaN or infinite samples")
    try:
        return resample(to_mono(data), sr, target_sr)
    except AudioDecodeError as exc:
        raise AudioDecodeError(f"{path}: {exc}") from exc


def trim_silence(
    wave: np.ndarray,
    sample_rate: int,
    trim_db: float | None,
    frame_seconds: float = WIN_SECONDS,
    hop_seconds: float = HOP_SECONDS,
) -> np.ndarray:
    """Cut leading and trailing silence: keep from the first to the last frame whose energy is within
    ``trim_db`` dB of the loudest frame's.

    Frame k covers samples [k·hop, k·hop + win) (the log-mel framing); E_k = Σ x²; kept frames are
    those with E_k > E_max · 10^(−trim_db/10), and the result is x[first·hop : last·hop + win].
    A wave shorter than one frame, an all-zero wave and ``trim_db=None`` come back unchanged.
    (N,) float32 → (N',) float32, a view of the input.
    """
    if trim_db is None:
        return wave
    win = max(1, round(frame_seconds * sample_rate))
    hop = max(1, round(hop_seconds * sample_rate))
    if len(wave) < win:
        return wave
    power = np.square(wave, dtype=np.float64)
    cumulative = np.concatenate([[0.0], np.cumsum(power)])
    starts = np.arange(0, len(wave) - win + 1, hop)
    energy = cumulative[starts + win] - cumulative[starts]  # (K,)
    peak = energy.max()
    if peak <= 0.0:
        return wave
    loud = np.flatnonzero(energy > peak * 10.0 ** (-trim_db / 10.0))
    return wave[starts[loud[0]] : starts[loud[-1]] + win]


def decode_audio_bytes(data: bytes, max_seconds: float | None = None) -> tuple[np.ndarray, int]:
    """Decode the bytes of an audio file (WAV, FLAC, OGG: any format soundfile reads) held in
    memory, shape (N, channels) float32, and its sample rate.

    For clients that send a file's content instead of a path or a waveform (a served model never
    opens client paths). The length comes from the header, before anything is decoded: a file
    longer than `max_seconds` raises `AudioTooLongError` (a compressed stream of hours of
    silence is a few kilobytes), and a header that does not state the length (FLAC allows it;
    soundfile then reports 2**63 - 1 frames and would allocate them) is refused. Down-mixing,
    resampling and the finiteness check are the caller's (`Predictor.predict_arrays` does them).
    """
    try:
        with soundfile.SoundFile(io.BytesIO(data)) as audio:
            rate, frames = audio.samplerate, audio.frames
            if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
                raise AudioDecodeError(
                    f"sample rate {rate} Hz is outside [{MIN_SAMPLE_RATE}, {MAX_SAMPLE_RATE}] Hz"
                )
            if frames == UNKNOWN_FRAMES:
                raise AudioDecodeError(
                    "the file's header does not state its length; expected a WAV or FLAC file whose header does"
                )
            if max_seconds is not None and frames > max_seconds * rate:
                raise AudioTooLongError(
                    f"{frames / rate:.1f} s of audio, more than the limit of {max_seconds:g} s"
                )
            samples = audio.read(dtype="float32", always_2d=True)
    except (RuntimeError, soundfile.LibsndfileError) as exc:  # AudioDecodeError is neither
        reason = getattr(exc, "error_string", exc)  # libsndfile's reason, without the BytesIO's repr
        raise AudioDecodeError(
            f"cannot decode the bytes as audio ({reason}); expected the content of a WAV, FLAC or OGG file"
        ) from exc
    if samples.shape[0] == 0:
        raise AudioDecodeError("the file holds no samples; expected at least one")
    return samples, rate
