"""Decode an audio file's bytes and check it before it enters a manifest.

`probe_audio` decodes with soundfile (libsndfile) and raises `AudioCheckError(reason_code,
message)` on the first failed check, in this order:

| reason_code | when |
|---|---|
| empty | zero bytes, or a header that declares no audio frames |
| unreadable | libsndfile cannot open the bytes (not audio, or the header itself is cut or corrupt) |
| sample_rate | native rate not in the corpus's allowed set |
| channels | more channels than the corpus's policy allows |
| duration | declared or decoded duration outside [min_duration_s, max_duration_s] (checked on the header first, so a huge declared length is refused before decoding) |
| truncated | the header declares more audio than the file yields: a WAV data chunk longer than the bytes present, or decoding (FLAC or any format) that stops before the declared frames |
| non_finite | NaN or infinite samples (float formats) |
| silence | peak amplitude <= silence_peak (all-zero audio) |
| clipped | more than max_clipped_fraction of samples at or above clip_level full scale |

Thresholds are `AudioChecks` values (defined in `data_contracts.corpora.base`, so that a corpus
module declares its own without loading numpy or soundfile), one set per corpus in its spec
(`CorpusSpec.audio_checks`, also `AUDIO_CHECKS[corpus]`). A file within a corpus's
`max_channels` keeps its native channel count in the manifest (training down-mixes).

Messages start with the file name and carry libsndfile's own error text, never the repr of
the in-memory buffer decoded (an object address, different on every run): the same file gives
the same reason on every run, and the same fault the same code whatever the format (a cut FLAC
and a cut WAV are both ``truncated``).
"""

from __future__ import annotations

import hashlib
import io
import math
import re
from dataclasses import dataclass

import numpy as np
import soundfile as sf

from data_contracts.corpora import SpecField
from data_contracts.corpora.base import AudioChecks
from data_contracts.errors import AudioCheckError

DECODE_BLOCK_FRAMES = 1 << 16
"""Frames decoded per read: a decoder error part-way still tells how many frames were decodable."""

_TRUNCATED_DATA = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)


AUDIO_CHECKS: SpecField[AudioChecks] = SpecField(lambda spec: spec.audio_checks)
"""Corpus name -> its thresholds (`CorpusSpec.audio_checks`), read from the registry."""


@dataclass(frozen=True)
class AudioProbe:
    """Decoded facts of one file: native rate, channel count, frames, duration, sha256 of the bytes."""

    sample_rate: int
    channels: int
    frames: int
    duration_s: float
    sha256: str


def _decoder_message(err: Exception) -> str:
    """libsndfile's text of a decoder error, without soundfile's ``Error opening <_io.BytesIO
    object at 0x…>`` prefix (an address that differs on every run)."""
    if isinstance(err, sf.LibsndfileError):
        return f"libsndfile: {err.error_string}"
    return f"{type(err).__name__}: {err}"


def _open(data: bytes, name: str) -> sf.SoundFile:
    try:
        return sf.SoundFile(io.BytesIO(data))
    except Exception as err:  # libsndfile reports bad bytes through several exception types
        raise AudioCheckError(
            "unreadable", f"{name}: cannot open as audio ({_decoder_message(err)})"
        ) from err


def _check_header(handle: sf.SoundFile, name: str, checks: AudioChecks) -> None:
    rate, channels, frames = handle.samplerate, handle.channels, handle.frames
    if rate <= 0 or channels <= 0:
        raise AudioCheckError("unreadable", f"{name}: header declares {rate} Hz, {channels} channels")
    if rate not in checks.sample_rates:
        raise AudioCheckError(
            "sample_rate", f"{name}: sample rate {rate} Hz, expected one of {sorted(checks.sample_rates)} Hz"
        )
    if channels > checks.max_channels:
        raise AudioCheckError(
            "channels", f"{name}: {channels} channels, expected at most {checks.max_channels}"
        )
    if frames <= 0:
        raise AudioCheckError("empty", f"{name}: no audio frames")
    if frames / rate > checks.max_duration_s:
        raise AudioCheckError(
            "duration", f"{name}: declares {frames / rate:.2f} s, expected at most {checks.max_duration_s} s"
        )
    for declared, present in _TRUNCATED_DATA.findall(handle.extra_info):
        if int(present) < int(declared):
            raise AudioCheckError(
                "truncated",
                f"{name}: header declares {declared} bytes of audio data, the file holds {present}",
            )


def _decode(handle: sf.SoundFile, name: str) -> np.ndarray:
    """The decodable samples, (frames, channels) float32, read in blocks of DECODE_BLOCK_FRAMES
    into one array of the declared length (no copy to join the blocks). A decoder error part-way
    (a cut FLAC loses sync, a seek runs past the end) is ``truncated``: the header declared frames
    the data does not yield. Fewer frames than declared come back as a shorter array."""
    declared = handle.frames  # at most max_duration_s of audio: _check_header ran first
    samples = np.empty((declared, handle.channels), dtype=np.float32)
    done = 0
    while done < declared:
        try:
            got = len(
                handle.read(dtype="float32", always_2d=True, out=samples[done : done + DECODE_BLOCK_FRAMES])
            )
        except Exception as err:  # decoder errors surface as several exception types
            raise AudioCheckError(
                "truncated",
                f"{name}: decoding stopped after {done} of {declared} declared frames ({_decoder_message(err)})",
            ) from err
        if not got:
            break
        done += got
    return samples[:done]


def _check_samples(samples: np.ndarray, name: str, checks: AudioChecks) -> None:
    """samples: (frames, channels) float32 in [-1, 1] full scale.

    peak = max |x| = max(|max x|, |min x|): two reductions and no temporary array on the common path.
    NaN and ±inf propagate into max and min, so the non-finite samples are counted only when one is
    present, and the clipped fraction is computed only when the peak reaches clip_level (below it,
    no sample is clipped).
    """
    high, low = float(samples.max()), float(samples.min())
    if not (math.isfinite(high) and math.isfinite(low)):
        raise AudioCheckError(
            "non_finite", f"{name}: {int((~np.isfinite(samples)).sum())} NaN or infinite samples"
        )
    peak = max(abs(high), abs(low))
    if peak <= checks.silence_peak:
        raise AudioCheckError(
            "silence", f"{name}: peak amplitude {peak:.3g} <= {checks.silence_peak} (silent audio)"
        )
    if peak < checks.clip_level:
        return
    clipped = float((np.abs(samples) >= checks.clip_level).mean())
    if clipped > checks.max_clipped_fraction:
        raise AudioCheckError(
            "clipped",
            f"{name}: {clipped:.2%} of samples at or above {checks.clip_level} full scale, "
            f"expected at most {checks.max_clipped_fraction:.2%}",
        )


def probe_audio(data: bytes, name: str, checks: AudioChecks | None = None) -> AudioProbe:
    """Decode `data` (the bytes of file `name`), run every check, return its AudioProbe.

    duration_s = frames / sample_rate; sha256 is the hex digest of `data`.
    Raises AudioCheckError(reason_code, message) naming `name` and the failed check.
    """
    checks = checks or AudioChecks()
    if not data:
        raise AudioCheckError("empty", f"{name}: empty file (0 bytes)")
    digest = hashlib.sha256(data).hexdigest()
    with _open(data, name) as handle:
        _check_header(handle, name, checks)
        rate, channels, declared = handle.samplerate, handle.channels, handle.frames
        samples = _decode(handle, name)  # (frames, channels)
    frames = samples.shape[0]
    if frames < declared:
        raise AudioCheckError("truncated", f"{name}: decoded {frames} of {declared} declared frames")
    duration = frames / rate
    if duration < checks.min_duration_s:
        raise AudioCheckError(
            "duration", f"{name}: {duration:.3f} s long, expected at least {checks.min_duration_s} s"
        )
    _check_samples(samples, name, checks)
    return AudioProbe(rate, channels, frames, duration, digest)
