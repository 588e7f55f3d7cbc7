"""Backbones: waveforms (B, L) + lengths (B,) → frames (B, T, D) + frame mask (B, T) (True = valid).

The interface every backbone implements (:class:`Backbone`), and the masks and masked statistics
both backbones use. The backbones themselves:

* ``ser_model.fbank_backbone.FbankBackbone``: the log-mel front end and 2-D CNN trained from
  scratch (``backbone="fbank"``);
* ``ser_model.hf_backbone.HFBackbone``: any Hugging Face audio SSL model such as WavLM
  (``backbone="hf:<hub id or local folder>"``).

``ser_model.model.build_backbone`` builds the one a ``ModelConfig`` names; the torch-free facts
about them (modes, the layer-weight rule, 16 kHz, the framing) are ``ser_model.backbone_facts``.
"""

from __future__ import annotations

import torch
from torch import nn

#: the variance floor of every normalisation statistic: std = sqrt(var + NORM_EPS) (``masked_mean_std``,
#: ``ser_model.speaker_norm.speaker_statistics``)
NORM_EPS = 1e-5


def lengths_to_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """Valid-position mask: mask[b, t] = t < lengths[b].  lengths (B,) long → (B, max_len) bool."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


class Backbone(nn.Module):
    """Interface: ``forward(waves (B, L), lengths (B,)) -> (frames (B, T, D), frame_mask (B, T))``.

    ``out_dim`` is D, ``frame_rate`` the frames per second, ``frame_lengths(lengths)`` the number
    of valid frames per utterance (>= 1).
    """

    out_dim: int
    frame_rate: float

    def frame_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def check_waveform_batch(waves: torch.Tensor, lengths: torch.Tensor) -> None:
    """ValueError unless ``waves`` is (B, L) with one length per waveform, each in [1, L]."""
    if waves.dim() != 2:
        raise ValueError(f"waves: got shape {tuple(waves.shape)}, expected (B, L) mono waveforms")
    if lengths.shape != (waves.shape[0],):
        raise ValueError(
            f"lengths: got shape {tuple(lengths.shape)}, expected ({waves.shape[0]},) one length per waveform"
        )
    if len(lengths) and (int(lengths.min()) < 1 or int(lengths.max()) > waves.shape[1]):
        raise ValueError(
            f"lengths: got values in [{int(lengths.min())}, {int(lengths.max())}], expected 1 <= length <= L={waves.shape[1]}"
        )


def masked_mean_std(
    x: torch.Tensor, mask: torch.Tensor, dim: int, eps: float = NORM_EPS
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation of x over the valid positions along ``dim``.

    x (B, T, …) with mask (B, T) broadcast over trailing dims; mean = Σ m x / Σ m,
    std = sqrt(Σ m (x − mean)² / Σ m + eps). Returns tensors with ``dim`` kept (size 1).
    """
    m = mask.to(x.dtype).reshape(mask.shape + (1,) * (x.dim() - mask.dim()))
    count = m.sum(dim=dim, keepdim=True).clamp_min(1.0)
    mean = (x * m).sum(dim=dim, keepdim=True) / count
    var = (((x - mean) * m) ** 2).sum(dim=dim, keepdim=True) / count
    return mean, torch.sqrt(var + eps)
