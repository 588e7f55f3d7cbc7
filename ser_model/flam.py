"""FLAM, the frame-level attention module (docs/METHOD.md "FLAM"), and the mean-pooling ablation.

Frames H (B, T, D) with a valid-frame mask (B, T) → multi-head self-attention over valid frames,
residual, LayerNorm (ours: LayerNorm after the residual, dropout 0.1) → H' → attention pooling
with a learnable query q (D,): α = softmax over valid frames of H' q / sqrt(D), u = Σ_t α_t H'_t.
Padded frames never change the output.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _check_mask(h: torch.Tensor, mask: torch.Tensor) -> None:
    if h.dim() != 3 or mask.shape != h.shape[:2] or mask.dtype != torch.bool:
        raise ValueError(
            f"frames {tuple(h.shape)} and mask {tuple(mask.shape)} {mask.dtype}: expected frames (B, T, D) and a bool mask (B, T)"
        )
    if not bool(mask.any(dim=1).all()):
        empty = torch.nonzero(~mask.any(dim=1)).flatten().tolist()
        raise ValueError(
            f"frame mask: utterance(s) {empty} have no valid frame; expected at least one per utterance"
        )


class FrameAttention(nn.Module):
    """Mask-aware multi-head self-attention + residual + LayerNorm: H' = LN(H + Dropout(MHA(H, H, H; mask))).

    h (B, T, D), mask (B, T) bool valid → (B, T, D); keys at padded frames get no weight, and
    padded output frames are set to 0.
    """

    def __init__(self, dim: int, heads: int, dropout: float = 0.1) -> None:
        super().__init__()
        if dim % heads != 0:
            raise ValueError(f"FrameAttention: dim={dim} is not divisible by heads={heads}")
        self.attention = nn.MultiheadAttention(dim, heads, dropout=0.0, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        _check_mask(h, mask)
        a, _ = self.attention(h, h, h, key_padding_mask=~mask, need_weights=False)  # (B, T, D)
        out = self.norm(h + self.dropout(a))
        return out * mask[:, :, None].to(out.dtype)


def attentive_pool(
    h: torch.Tensor, mask: torch.Tensor, query: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention pooling with a query vector.

    s_t = h_t · q / sqrt(D);  α = softmax over valid t of s (α_t = 0 at padded t);  u = Σ_t α_t h_t.
    h (B, T, D), mask (B, T) bool valid, query (D,) → u (B, D), α (B, T).
    """
    _check_mask(h, mask)
    scores = (h @ query) / math.sqrt(h.shape[-1])  # (B, T)
    scores = scores.masked_fill(~mask, float("-inf"))
    alpha = torch.softmax(scores.float(), dim=1).to(h.dtype)  # (B, T)
    u = torch.einsum("bt,btd->bd", alpha, h)  # (B, D)
    return u, alpha


class AttentivePooling(nn.Module):
    """Holds the learnable query q (D,) of ``attentive_pool``; forward(h, mask) → (u (B, D), α (B, T))."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.randn(dim) / math.sqrt(dim))

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return attentive_pool(h, mask, self.query)


def mean_pool(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over valid frames: u = Σ_t m_t h_t / Σ_t m_t.  h (B, T, D), mask (B, T) → (B, D)."""
    _check_mask(h, mask)
    m = mask.to(h.dtype)[:, :, None]
    return (h * m).sum(dim=1) / m.sum(dim=1)
