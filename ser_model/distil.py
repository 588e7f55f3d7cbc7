"""Knowledge distillation of a seed ensemble into one student (Hinton et al. 2015; docs/METHOD.md "Distillation").

The teacher is the release's ensemble (``ser_model.ensemble``): its members' mean class probability
p̄ = (1/M) Σ_m softmax(z_m). With temperature τ it is softened as p̄^τ ∝ p̄^{1/τ}, i.e. softmax(log p̄ / τ),
the softmax at temperature τ of the ensemble's logits log p̄ (τ = 1: p̄ itself). The student's loss on
a batch, with its logits z and the labels y:

    L = α · τ² · KL(p̄^τ ‖ softmax(z / τ)) + (1 − α) · CE(z, y)

KL(p ‖ q) = Σ_c p_c (log p_c − log q_c) with 0·log 0 = 0; both terms are batch means. τ² keeps the
soft term's gradient on the scale of the hard one's as τ grows (Hinton et al. §2); α = 1 learns from
the teacher alone, α = 0 from the labels alone.

The teacher's probabilities are computed once per training utterance, before the student's first
epoch (`teacher_probabilities`): each utterance whole (silence-trimmed, up to ``EVAL_MAX_SECONDS``),
in eval mode, as the teacher's `ser_model.inference.Predictor` scores it at T = 1; the student's
random crops of an utterance all learn its whole-utterance p̄. A student's recipe trains on each
utterance's own label and p̄, so EAM's mixtures and MLL's other terms are refused (`require_student_recipe`).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F

from ser_model.config import SERConfig, TrainConfig
from ser_model.config_validation import ConfigError, require
from ser_model.ensemble import SEREnsemble
from ser_model.evaluation import split_logits, whole_utterances
from ser_model.fbank_backbone import LogMelStatistics
from ser_model.model import SERModel
from ser_model.runtime import Runtime
from ser_model.training_data import FoldData

__all__ = [
    "averaged_probabilities",
    "soften",
    "distillation_loss",
    "Teacher",
    "teacher_probabilities",
    "require_student_recipe",
    "student_loss",
    "student_targets",
    "distillation_record",
]

log = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class Teacher:
    """What a student learns from: ``model``, a seed ensemble (or one model), and ``record``, what the
    student's result.json says of it (its members' seeds and folders, ...)."""

    model: SEREnsemble | SERModel
    record: dict[str, Any]


def require_student_recipe(config: SERConfig, where: str) -> None:
    """ConfigError at ``where`` unless ``config`` can train a student: `distillation_loss` replaces the
    multi-loss and pairs each utterance's own label with its own p̄, so EAM (mixtures of two
    utterances) and MLL's focal, center and SupCon terms must be off, as in ``cpu-fbank``."""
    on = [key for key in ("eam.enabled", "loss.focal", "loss.center", "loss.supcon") if config.value(key)]
    require(
        not on,
        where,
        f'{on} on; a student learns by the distillation loss alone (docs/METHOD.md "Distillation"): '
        "expected them false, as in cpu-fbank",
    )


@torch.no_grad()
def teacher_probabilities(
    teacher: SEREnsemble | SERModel,
    rows: pd.DataFrame,
    audio_root: str | os.PathLike,
    runtime: Runtime,
    row_stats: LogMelStatistics | None = None,
    batch_size: int = 4,
) -> torch.Tensor:
    """The teacher's p̄ (N, C) float32 on manifest ``rows``, in row order (module docstring): every
    utterance whole, silence-trimmed by the teacher's config, scored in eval mode (`split_logits`,
    sharded across ranks and gathered); an ensemble's logits are log p̄, so p̄ = softmax(logits).
    ``row_stats``: a speaker-normalised teacher's statistics of every row (N, n_mels)."""
    # decoded once, item by item: the training split keeps its own copy
    dataset = whole_utterances(teacher, rows, audio_root, preload=False)
    logits = split_logits(teacher, dataset, batch_size, runtime, row_stats)
    return torch.softmax(torch.from_numpy(logits), dim=-1)


def student_targets(
    teacher: Teacher | None,
    config: SERConfig,
    data: FoldData,
    audio_root: str | os.PathLike,
    runtime: Runtime,
) -> torch.Tensor | None:
    """A fit's targets for a student: None without a teacher; else the teacher's p̄ of every training
    row (N, C) (`teacher_probabilities`), once the recipe (`require_student_recipe`) and the
    teacher's classes (the student's, in order) are checked."""
    if teacher is None:
        return None
    require_student_recipe(config, "fit(teacher=...)")
    if tuple(teacher.model.labels) != tuple(config.labels):
        raise ConfigError(
            f"fit(teacher=...): the teacher's classes {list(teacher.model.labels)}; expected the student's "
            f"{list(config.labels)}, in that order"
        )
    started = time.perf_counter()
    rows = data.splits["train"]
    p_bar = teacher_probabilities(
        teacher.model, rows, audio_root, runtime, data.row_stats.get("train"), config.train.eval_batch_size
    )
    log.info(
        "teacher: p̄ of %d training utterances in %.1f s, mean top probability %.3f",
        len(rows),
        time.perf_counter() - started,
        float(p_bar.max(dim=-1).values.mean()),
    )
    return p_bar


def student_loss(
    logits: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, tc: TrainConfig
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """`distillation_loss` at the config's α (``distil_alpha``) and τ (``distil_temperature``)."""
    return distillation_loss(
        logits, teacher, labels, alpha=tc.distil_alpha, temperature=tc.distil_temperature
    )


def distillation_record(teacher: Teacher | None, tc: TrainConfig) -> dict[str, Any]:
    """What a fit's result.json says of its teacher: ``{"distillation": {α, τ, how p̄ was computed, the
    teacher's record}}`` for a student, ``{}`` without a teacher."""
    if teacher is None:
        return {}
    how = "once per training utterance, whole, in eval mode (ser_model.distil.teacher_probabilities)"
    return {
        "distillation": {
            "alpha": tc.distil_alpha,
            "temperature": tc.distil_temperature,
            "teacher_probabilities": how,
            **teacher.record,
        }
    }
