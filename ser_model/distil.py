"""Knowledge distillation of a seed ensemble into one student (Hinton et al. 2015; docs/METHOD.md "Distillation").

The teacher is the release's ensemble (``ser_model.ensemble``): its members' mean class probability
p̄ = (1/M) Σ_m softmax(z_m). With temperature τ it is softened as p̄^τ ∝ p̄^{1/τ}, i.e. softmax(log p̄ / τ),
the softmax at temperature τ of the ensemble's logits log p̄ (τ = 1: p̄ itself). The student's loss on
a batch, with its logits z and the labels y:

    L = α · τ² · KL(p̄^τ ‖ softmax(z / τ)) + (1 − α) · CE(z, y)

KL(p ‖ q) = Σ_c p_c (log p_c − log q_c) with 0·log 0 = 0; both terms are batch means. τ² keeps the
soft term's gradient on the scale of the hard one's as τ grows (Hinton et al. §2); α = 1 learns from
the teacher alone, α = 0 from the labels alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["averaged_probabilities", "soften", "distillation_loss"]


def averaged_probabilities(member_logits: torch.Tensor) -> torch.Tensor:
    """The ensemble's mean class probability p̄ = (1/M) Σ_m softmax(z_m): logits (M, B, C) → (B, C)."""
    return torch.softmax(member_logits.float(), dim=-1).mean(dim=0)


def soften(probabilities: torch.Tensor, temperature: float) -> torch.Tensor:
    """p^τ = softmax(log p / τ) (B, C): the distribution at temperature τ whose logits are log p (τ = 1: p)."""
    if temperature <= 0:
        raise ValueError(f"soften: temperature {temperature}; expected > 0")
    log_p = torch.log(probabilities.float().clamp_min(torch.finfo(torch.float32).tiny))
    return torch.softmax(log_p / temperature, dim=-1)


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_probabilities: torch.Tensor,
    labels: torch.Tensor,
    *,
    alpha: float,
    temperature: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L = α τ² KL(p̄^τ ‖ softmax(z/τ)) + (1 − α) CE(z, y) (module docstring).

    student_logits z (B, C), teacher_probabilities p̄ (B, C) (rows summing to 1, before softening),
    labels y (B,) long → (L, {"distil_kl": KL, "ce": CE}), scalars, the terms before weighting.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"distillation_loss: alpha {alpha}; expected a weight in [0, 1]")
    if student_logits.shape != teacher_probabilities.shape:
        raise ValueError(
            f"distillation_loss: student logits {tuple(student_logits.shape)} and teacher probabilities "
            f"{tuple(teacher_probabilities.shape)}; expected the same (B, C)"
        )
    target = soften(teacher_probabilities, temperature)  # (B, C)
    log_q = F.log_softmax(student_logits.float() / temperature, dim=-1)
    kl = (torch.xlogy(target, target) - target * log_q).sum(dim=-1).mean()
    ce = F.cross_entropy(student_logits.float(), labels)
    total = alpha * temperature**2 * kl + (1.0 - alpha) * ce
    return total, {"distil_kl": kl.detach(), "ce": ce.detach()}
