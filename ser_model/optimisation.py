"""What a fit optimises and how (docs/METHOD.md "Training"): the objective (the model and its
multi-loss, or a student's loss, in one forward), the model with the same initial weights on every
rank, Adam with its per-update learning-rate schedule, the gradient scaler and the weight average,
together the ``TrainingState`` of epoch 0 (``ser_model.resume``)."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ser_model.config import SERConfig, TrainConfig
from ser_model.distil import student_loss
from ser_model.ema import WeightAverage
from ser_model.fbank_backbone import LogMelStatistics
from ser_model.losses import multi_loss
from ser_model.model import SERModel, SEROutput
from ser_model.resume import TrainingState
from ser_model.runtime import Runtime, derived_seed, seed_everything
from ser_model.training_data import FoldData

__all__ = ["TrainingObjective", "seeded_model", "lr_factor", "training_state"]


class TrainingObjective(nn.Module):
    """The model and its multi-loss in one forward, so that DistributedDataParallel sees every
    parameter the loss touches (class centers and SupCon projection included)."""

    def __init__(self, model: SERModel, generator: torch.Generator):
        super().__init__()
        self.model = model
        self.generator = generator

    def forward(
        self,
        x: torch.Tensor,
        extent: torch.Tensor,
        soft_targets: torch.Tensor,
        labels: torch.Tensor,
        cached: bool = False,
        speaker_stats: LogMelStatistics | None = None,
        pitch: torch.Tensor | None = None,
        teacher: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """x, extent: waves (B, L) and lengths (B,); with ``cached``, cached backbone states (B, K', T, D) and their mask (B, T).
        ``speaker_stats``: each row's speaker statistics (B, n_mels) for a speaker-normalised model;
        ``pitch``: the crops' cached pitch features (B, T, 4) (``ser_model.pitch_cache``), or None;
        ``teacher``: a student's targets, the teacher's p̄ (B, C), whose loss replaces the multi-loss."""
        out: SEROutput = (
            self.model.forward_cached(x, extent)
            if cached
            else self.model(x, extent, speaker_stats, pitch=pitch)
        )
        if teacher is not None:
            return student_loss(out.logits, teacher, labels, self.model.config.train)
        return multi_loss(
            out,
            soft_targets,
            labels,
            self.model.centers,
            self.model.supcon_proj,
            self.model.config.loss,
            self.generator,
        )


def seeded_model(config: SERConfig, runtime: Runtime) -> tuple[SERModel, dict[str, torch.Generator]]:
    """The model, with the same initial weights on every rank, and this rank's generators ("eam"
    draws the mixup, "loss" the SupCon views); the global seeds then differ per rank."""
    seed = config.train.seed
    seed_everything(seed)  # identical initial weights on every rank
    model = SERModel(config).to(runtime.device)
    eam_generator = torch.Generator().manual_seed(derived_seed(seed, runtime.rank, 0))
    loss_generator = torch.Generator().manual_seed(derived_seed(seed, runtime.rank, 1))
    seed_everything(derived_seed(seed, runtime.rank, 2))  # dropout and masks differ per rank
    return model, {"eam": eam_generator, "loss": loss_generator}


def lr_factor(step: int, updates_per_epoch: int, tc: TrainConfig) -> float:
    """Multiplier of the base learning rates (``lr``, ``center_lr``) at optimiser update ``step`` (0-based).

    With W = warmup_epochs · updates_per_epoch warm-up updates and S = epochs · updates_per_epoch in all:
    warm-up (step < W): (step + 1) / W; then "exponential": lr_decay^floor(step / updates_per_epoch)
    (the paper's × 7/8 after every epoch), or "cosine": ½ (1 + cos(π (step − W) / (S − W))).
    """
    warmup = tc.warmup_epochs * updates_per_epoch
    if step < warmup:
        return (step + 1) / warmup
    if tc.schedule == "exponential":
        return tc.lr_decay ** (step // updates_per_epoch)
    total = tc.epochs * updates_per_epoch
    progress = min(1.0, (step - warmup) / max(1.0, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def training_state(
    model: SERModel,
    generators: dict[str, torch.Generator],
    data: FoldData,
    config: SERConfig,
    runtime: Runtime,
) -> TrainingState:
    """Epoch 0: the objective (DistributedDataParallel under torchrun), Adam (the main parameters at
    ``lr``, the class centers at ``center_lr``) scheduled per update by `lr_factor`, the fp16
    gradient scaler and the weight average of ``ema_decay``."""
    tc = config.train
    objective: nn.Module = TrainingObjective(model, generators["loss"])
    if runtime.distributed:
        objective = DistributedDataParallel(
            objective,
            device_ids=[runtime.device.index] if runtime.device.type == "cuda" else None,
            find_unused_parameters=True,
        )
    groups = [{"params": model.main_parameters(), "lr": tc.lr}]
    if model.center_parameters():
        groups.append({"params": model.center_parameters(), "lr": tc.center_lr})
    optimizer = torch.optim.Adam(groups, weight_decay=tc.weight_decay)
    updates_per_epoch = math.ceil(len(data.sampler) / tc.grad_accum)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, updates_per_epoch, tc)
    )
    scaler = torch.amp.GradScaler(runtime.device.type, enabled=runtime.amp_dtype == torch.float16)
    average = WeightAverage(model, tc.ema_decay) if tc.ema_decay is not None else None
    return TrainingState(model, objective, generators, optimizer, scheduler, scaler, data.sampler, average)
