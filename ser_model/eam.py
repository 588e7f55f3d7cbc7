"""Energy-adaptive mixup on waveforms (docs/METHOD.md "EAM"): draws vectorised over the batch, segment arithmetic per sample.

For primary x_i (length l_i, label y_i) and partner x_j = x_{partner[i]}:
1. l_mix ~ U{1, …, floor(l_i/2) − 1} (strictly less than half of x_i); l_mix = min(l_mix, l_j);
2. starts s_i ~ U{0, …, l_i − l_mix}, s_j ~ U{0, …, l_j − l_mix}; a_i, a_j the segments;
3. SNR ~ U[snr_db_low, snr_db_high] dB;
4. P'_i = mean(a_i²), P'_j = mean(a_j²), g = sqrt(P'_i / (10^(SNR/10) P'_j)), P''_j = g² P'_j;
5. x_mix = x_i with x_mix[s_i : s_i + l_mix] += g a_j;
6. λ = (l_mix / l_i) · P''_j / (P'_i + P''_j);  y_mix = (1 − λ) y_i + λ y_j.
Not mixed (λ = 0, waveform bit-identical, label unchanged): EAM disabled, the sample not drawn
(mix_prob, ours), floor(l_i/2) <= 1, partner = itself (batch of one), or a degenerate segment:
P'_i <= r·P_i or P'_j <= r·P_j, where P_i is the mean power of the whole utterance x_i and
r = 10^(degenerate_db/10) (ours, relative: a near-silent segment is neither boosted to the drawn SNR
nor allowed to move the label; an all-zero utterance is always degenerate). Ours: the partner is drawn by a random cyclic permutation of
the batch (never the sample itself when B >= 2).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ser_model.config import EAMConfig


@dataclass
class EAMResult:
    """waves (B, L) mixed; targets (B, C) soft labels; lam (B,) λ (0 where not mixed); partner (B,)
    long; snr_db (B,) drawn SNR (meaningful where mixed); segment (B, 2) long (s_i, l_mix) with
    l_mix = 0 where not mixed; partner_start (B,) long s_j; mixed (B,) bool.
    """

    waves: torch.Tensor
    targets: torch.Tensor
    lam: torch.Tensor
    partner: torch.Tensor
    snr_db: torch.Tensor
    segment: torch.Tensor
    partner_start: torch.Tensor
    mixed: torch.Tensor


def random_partner(batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Partner index per sample: a random permutation π, then partner[π_k] = π_{k+1 mod B} (a single cycle, no fixed point for B >= 2).  → (B,) long."""
    device = generator.device if generator is not None else torch.device("cpu")
    order = torch.randperm(batch_size, generator=generator, device=device)
    partner = torch.empty_like(order)
    partner[order] = order.roll(-1)
    return partner


def degenerate_segments(
    waves: torch.Tensor,
    lengths: torch.Tensor,
    p_i: torch.Tensor,
    p_j: torch.Tensor,
    partner: torch.Tensor,
    degenerate_db: float,
) -> torch.Tensor:
    """Pairs whose primary or partner segment is degenerate: P'_i <= r·P_i or P'_j <= r·P_{partner},
    with P_b = mean over the valid samples of x_b² and r = 10^(degenerate_db/10).

    waves (B, L), lengths (B,), segment powers p_i, p_j (B,) float64, partner (B,) long → (B,) bool.
    """
    valid = torch.arange(waves.shape[1], device=waves.device)[None, :] < lengths[:, None]  # (B, L)
    power = (waves.double().square() * valid).sum(dim=1) / lengths.clamp_min(1)  # (B,) float64
    ratio = 10.0 ** (degenerate_db / 10.0)
    return (p_i <= ratio * power) | (p_j <= ratio * power[partner])


def energy_adaptive_mixup(
    waves: torch.Tensor,
    lengths: torch.Tensor,
    targets: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    config: EAMConfig | None = None,
) -> EAMResult:
    """EAM over a padded batch (module docstring has the algorithm).

    waves (B, L) float (padding beyond lengths is ignored), lengths (B,) long, targets (B, C)
    one-hot or soft rows → EAMResult. Deterministic given ``generator``; all random draws are made
    for every sample, so the draws do not depend on which samples end up mixed. The draws, λ and
    labels are vectorised; the segment arithmetic runs per sample on contiguous slices (faster on
    CPU than (B, L) index grids: about 2 host syncs per batch on a GPU).
    """
    if (
        waves.dim() != 2
        or lengths.shape != waves.shape[:1]
        or targets.dim() != 2
        or targets.shape[0] != waves.shape[0]
    ):
        raise ValueError(
            f"energy_adaptive_mixup: got waves {tuple(waves.shape)}, lengths {tuple(lengths.shape)}, "
            f"targets {tuple(targets.shape)}; expected (B, L), (B,), (B, C)"
        )
    config = config or EAMConfig()
    b = waves.shape[0]
    device = waves.device
    lengths = lengths.to(device=device, dtype=torch.long)
    gdev = generator.device if generator is not None else torch.device("cpu")
    if not config.enabled or b == 0:
        zeros = torch.zeros(b, dtype=torch.long, device=device)
        return EAMResult(
            waves,
            targets,
            torch.zeros(b, dtype=waves.dtype, device=device),
            torch.arange(b, device=device),
            torch.zeros(b, dtype=waves.dtype, device=device),
            torch.stack([zeros, zeros], dim=1),
            zeros,
            torch.zeros(b, dtype=torch.bool, device=device),
        )

    partner = random_partner(b, generator).to(device)
    u = torch.rand(5, b, generator=generator, device=gdev, dtype=torch.float64).to(device)  # (5, B)
    l_i = lengths
    l_j = lengths[partner]
    half = torch.div(l_i, 2, rounding_mode="floor")
    eligible = (half > 1) & (partner != torch.arange(b, device=device)) & (u[0] < config.mix_prob)

    # 1. l_mix ∈ [1, half − 1], then truncated to the partner's length
    l_mix = 1 + (u[1] * (half - 1).clamp_min(1)).long().clamp_max((half - 2).clamp_min(0))
    l_mix = torch.minimum(l_mix, l_j)
    # 2. starts, uniform over the positions where the segment fits
    s_i = (u[2] * (l_i - l_mix + 1)).long().clamp_max(l_i - l_mix)
    s_j = (u[3] * (l_j - l_mix + 1)).long().clamp_max(l_j - l_mix)
    # 3. SNR in dB
    snr_db = config.snr_db_low + u[4] * (config.snr_db_high - config.snr_db_low)  # (B,) float64

    # 4. segment powers (float64), one contiguous slice per sample: views, no (B, L) temporaries
    rows = list(zip(s_i.tolist(), l_mix.tolist(), partner.tolist(), s_j.tolist()))
    seg_i = [waves[i, s : s + n] for i, (s, n, _, _) in enumerate(rows)]
    seg_j = [waves[j, s2 : s2 + n] for (_, n, j, s2) in rows]
    p_i = torch.stack([a.double().square().mean() for a in seg_i])  # (B,)
    p_j = torch.stack([a.double().square().mean() for a in seg_j])  # (B,)
    mixed = eligible & ~degenerate_segments(waves, lengths, p_i, p_j, partner, config.degenerate_db)
    snr_lin = torch.pow(10.0, snr_db / 10.0)
    gain = torch.where(
        mixed, torch.sqrt(p_i / (snr_lin * p_j.clamp_min(torch.finfo(torch.float64).tiny))), 0.0
    )
    p_j_scaled = p_i / snr_lin
    # 5. add g·a_j inside x_i's segment only; rows not mixed are not touched (bit-identical)
    out = waves.clone()
    gain_w = gain.to(waves.dtype)
    for i in torch.nonzero(mixed).flatten().tolist():
        s, n = rows[i][0], rows[i][1]
        out[i, s : s + n] += gain_w[i] * seg_j[i]
    # 6. λ and the soft label
    lam = torch.where(mixed, (l_mix / l_i) * p_j_scaled / (p_i + p_j_scaled), 0.0)
    lam_t = lam.to(targets.dtype)[:, None]
    soft = torch.where(mixed[:, None], (1 - lam_t) * targets + lam_t * targets[partner], targets)
    seg_len = torch.where(mixed, l_mix, 0)
    return EAMResult(
        out,
        soft,
        lam.to(waves.dtype),
        partner,
        snr_db.to(waves.dtype),
        torch.stack([s_i, seg_len], dim=1),
        s_j,
        mixed,
    )
