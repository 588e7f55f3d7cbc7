"""The multi-loss (docs/METHOD.md "MLL"): one pure function per term, and their weighted sum.

L = w_kl·KL(y_soft ‖ softmax(z)) + w_focal·Focal(z, y_soft; γ) + w_center·Center(e, y_primary)
  + w_supcon·SupCon(frame views, y_primary; τ)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from ser_model.config import LossConfig

if TYPE_CHECKING:
    from ser_model.model import SEROutput


def soft_kl_loss(logits: torch.Tensor, soft_targets: torch.Tensor) -> torch.Tensor:
    """KL(y ‖ softmax(z)) = Σ_c y_c (log y_c − log p_c), with 0·log 0 = 0, averaged over the batch.

    logits (B, C), soft_targets (B, C) rows summing to 1 → scalar.
    """
    log_p = F.log_softmax(logits.float(), dim=1)
    y = soft_targets.float()
    return (torch.xlogy(y, y) - y * log_p).sum(dim=1).mean()


def focal_loss(logits: torch.Tensor, soft_targets: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Focal loss with soft targets: −Σ_c y_c (1 − p_c)^γ log p_c, averaged over the batch (γ = 0: cross-entropy).

    logits (B, C), soft_targets (B, C) → scalar.
    """
    log_p = F.log_softmax(logits.float(), dim=1)
    p = log_p.exp()
    return -(soft_targets.float() * (1.0 - p).pow(gamma) * log_p).sum(dim=1).mean()


def center_loss(emb: torch.Tensor, labels: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """Center loss ½‖e_b − c_{y_b}‖², averaged over the batch.

    emb (B, E), labels (B,) long in [0, C), centers (C, E) → scalar.
    """
    diff = emb.float() - centers.float()[labels]  # (B, E)
    return 0.5 * (diff * diff).sum(dim=1).mean()


def frame_views(
    frames: torch.Tensor, mask: torch.Tensor, n_views: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Frame-level views for SupCon: v_{b,k} = 0.5·h_{b,t_k} + 0.5·mean_t(h_b) at valid frames t_k drawn uniformly (with replacement).

    frames (B, T, D), mask (B, T) bool valid → views (B, V, D) with V = n_views.
    """
    b = frames.shape[0]
    n_valid = mask.sum(dim=1)  # (B,)
    device = generator.device if generator is not None else torch.device("cpu")
    u = torch.rand(b, n_views, generator=generator, device=device).to(frames.device)
    t = (u * n_valid[:, None]).long().clamp_max(n_valid[:, None] - 1)  # (B, V) valid frame indices
    picked = torch.gather(frames, 1, t[:, :, None].expand(-1, -1, frames.shape[2]))  # (B, V, D)
    m = mask.to(frames.dtype)[:, :, None]
    mean = (frames * m).sum(dim=1) / m.sum(dim=1)  # (B, D)
    return 0.5 * picked + 0.5 * mean[:, None, :]


def supcon_loss(features: torch.Tensor, labels: torch.Tensor, tau: float = 0.07) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al. 2020, L_out), averaged over anchors with a positive.

    For anchor i with positives P(i) = {p ≠ i : y_p = y_i} and A(i) = {a ≠ i}:
    L_i = −1/|P(i)| Σ_{p∈P(i)} log( exp(z_i·z_p/τ) / Σ_{a∈A(i)} exp(z_i·z_a/τ) ).
    features (N, P) L2-normalised, labels (N,) → scalar (0 when no anchor has a positive).
    """
    z = features.float()
    n = z.shape[0]
    sim = (z @ z.T) / tau  # (N, N)
    self_mask = torch.eye(n, dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(self_mask, float("-inf"))
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)  # (N, N), −inf on the diagonal
    positives = (labels[:, None] == labels[None, :]) & ~self_mask  # (N, N)
    n_pos = positives.sum(dim=1)  # (N,)
    has_pos = n_pos > 0
    if not bool(has_pos.any()):
        return z.sum() * 0.0
    pos_log_prob = log_prob.masked_fill(~positives, 0.0).sum(dim=1)  # (N,)
    per_anchor = -pos_log_prob[has_pos] / n_pos[has_pos]
    return per_anchor.mean()


def multi_loss(
    out: SEROutput,
    soft_targets: torch.Tensor,
    primary_labels: torch.Tensor,
    centers: torch.Tensor | None,
    proj: nn.Module | None,
    cfg: LossConfig,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted sum of the switched-on terms; switched-off terms are not computed.

    out: the model output (logits (B, C), embedding (B, E), frames (B, T, D), frame_mask (B, T));
    soft_targets (B, C) (EAM soft labels, or one-hot); primary_labels (B,) long (label of each
    primary utterance); centers (C, E) (needed when cfg.center); proj: SupCon projection head
    D → P (needed when cfg.supcon).
    Returns (total, terms) where terms holds the detached unweighted value of every computed term.
    """
    terms: dict[str, torch.Tensor] = {}
    total = out.logits.new_zeros((), dtype=torch.float32)
    if cfg.kl:
        value = soft_kl_loss(out.logits, soft_targets)
        total = total + cfg.w_kl * value
        terms["kl"] = value.detach()
    if cfg.focal:
        value = focal_loss(out.logits, soft_targets, cfg.focal_gamma)
        total = total + cfg.w_focal * value
        terms["focal"] = value.detach()
    if cfg.center:
        if centers is None:
            raise ValueError("multi_loss: LossConfig.center is on but no centers (C, E) were given")
        value = center_loss(out.embedding, primary_labels, centers)
        total = total + cfg.w_center * value
        terms["center"] = value.detach()
    if cfg.supcon:
        if proj is None:
            raise ValueError("multi_loss: LossConfig.supcon is on but no projection head was given")
        views = frame_views(out.frames, out.frame_mask, cfg.supcon_views, generator)  # (B, V, D)
        z = F.normalize(proj(views).float(), dim=-1).flatten(0, 1)  # (B·V, P)
        value = supcon_loss(z, primary_labels.repeat_interleave(cfg.supcon_views), cfg.supcon_tau)
        total = total + cfg.w_supcon * value
        terms["supcon"] = value.detach()
    return total, terms
