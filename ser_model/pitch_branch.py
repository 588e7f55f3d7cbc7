"""The fbank backbone's pitch branch (``model.pitch``; docs/METHOD.md "Pitch"): the pitch track,
convolved over time and pooled to the CNN's frame rate, joins every CNN frame before the projection.

    P (B, T, 4)  pitch features per log-mel frame (``ser_model.pitch.pitch_features``), zero at padded frames
    → 2 × [Conv1d k=5 (same padding) → BatchNorm1d → ReLU → zero at padded frames]  (B, 32, T)
    → MaxPool1d(Π fbank_time_pools, ceil mode)                                     (B, 32, ⌈T / Π⌉)
    → concatenated to the CNN's frame (B, ⌈T / Π⌉, C·F'), then ``project`` → (B, T', D) → FLAM

⌈⌈T / a⌉ / b⌉ = ⌈T / ab⌉, so one pooling by the product of the CNN's time pools gives the CNN's frame
count. As in the CNN's blocks, padded frames are zero before each convolution and after each ReLU
(valid values are >= 0, so a pooling window that straddles the end keeps the max of its valid frames),
so in eval mode the branch is exactly padding-invariant.

Where the track comes from: given by the caller (training crops of the cached whole-utterance track,
``ser_model.pitch_cache``), or computed from the waveforms in the forward pass (evaluation, every
inference path, and training batches whose audio was speed-perturbed or mixed by EAM). In training a
SpecAugment time mask hides the masked frames' pitch too (``FbankBackbone.forward``).
"""

from __future__ import annotations

import torch
from torch import nn

from ser_model.pitch import PITCH_CHANNELS, pitch_features, pitch_frame_lengths, track_pitch

__all__ = ["PITCH_BRANCH_CHANNELS", "PitchBranch", "frames_of_pitch", "pitch_input"]

PITCH_BRANCH_CHANNELS = 32
"""The branch's width: what it adds to each CNN frame before the projection."""
KERNEL = 5
"""Frames each convolution sees (50 ms; two of them: 90 ms of contour per output before pooling)."""


def frames_of_pitch(
    pitch: torch.Tensor | None, waves: torch.Tensor, lengths: torch.Tensor, sample_rate: int, n_frames: int
) -> torch.Tensor:
    """The pitch features (B, n_frames, 4) of a batch whose log-mel has ``n_frames`` frames: ``pitch``
    (B, T_p, 4) cut or zero-padded to n_frames, or, when None, computed from ``waves`` (B, L), ``lengths`` (B,)."""
    if pitch is None:
        with torch.autocast(device_type=waves.device.type, enabled=False):
            pitch = pitch_features(track_pitch(waves, lengths, sample_rate))  # (B, T, 4)
    if pitch.dim() != 3 or pitch.shape[0] != waves.shape[0] or pitch.shape[2] != PITCH_CHANNELS:
        raise ValueError(
            f"pitch: got shape {tuple(pitch.shape)}, expected ({waves.shape[0]}, T, {PITCH_CHANNELS}): "
            "ser_model.pitch.pitch_features of each waveform"
        )
    pitch = pitch[:, :n_frames]
    return nn.functional.pad(pitch, (0, 0, 0, n_frames - pitch.shape[1])).to(waves.dtype)


def pitch_input(waves: torch.Tensor, lengths: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """The pitch features (B, T, 4) a ``model.pitch`` model takes with the padded batch ``waves`` (B, L),
    ``lengths`` (B,): T = max(1, 1 + ⌊(L − win) / hop⌋), the batch's log-mel frames. What an ensemble
    computes once for its members and what the ONNX graph takes as its ``pitch`` input."""
    n_frames = int(pitch_frame_lengths(torch.tensor([waves.shape[1]]), sample_rate)[0])
    return frames_of_pitch(None, waves, lengths, sample_rate, n_frames)


class PitchBranch(nn.Module):
    """pitch (B, T, 4) zero at padded frames, mask (B, T) bool (valid and not time-masked) →
    (B, ⌈T / time_pool⌉, PITCH_BRANCH_CHANNELS) (module docstring)."""

    def __init__(self, time_pool: int, channels: int = PITCH_BRANCH_CHANNELS) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            [
                nn.Conv1d(PITCH_CHANNELS, channels, KERNEL, padding=KERNEL // 2, bias=False),
                nn.Conv1d(channels, channels, KERNEL, padding=KERNEL // 2, bias=False),
            ]
        )
        self.norms = nn.ModuleList([nn.BatchNorm1d(channels), nn.BatchNorm1d(channels)])
        self.pool = nn.MaxPool1d(time_pool, ceil_mode=True)
        self.out_dim = channels

    def forward(self, pitch: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        keep = mask[:, None, :].to(pitch.dtype)  # (B, 1, T)
        x = pitch.transpose(1, 2) * keep  # (B, 4, T)
        for conv, norm in zip(self.convs, self.norms):
            x = torch.relu(norm(conv(x))) * keep  # (B, P, T)
        return self.pool(x).transpose(1, 2)  # (B, ⌈T / time_pool⌉, P)
