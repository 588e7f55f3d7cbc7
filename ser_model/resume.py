"""Exact resume: what a training run carries from epoch to epoch (`TrainingState`), the checkpoint
every epoch writes of it, and continuing from that checkpoint.

`<out>/checkpoints/last` (`ser_model.checkpoint`, atomic) holds the weights and the optimiser,
schedule, gradient scaler, sampler position, every rank's random states, the weight average, the
epoch, the selection so far and the history; resuming from it continues bit-identically to an
uninterrupted run on CPU. A checkpoint resumes only under the same configuration (the number of
epochs may grow; a fold >= 0 ignores the settings of the release model alone) and world size.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model
from torch import nn

from ser_model.checkpoint import (
    capture_rng_state,
    load_training_state,
    resolve_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from ser_model.config import SERConfig
from ser_model.config_validation import ConfigError
from ser_model.data import LengthBucketSampler
from ser_model.ema import WeightAverage
from ser_model.model import WEIGHTS_FILE, SERModel
from ser_model.runtime import Runtime, gather_from_ranks

__all__ = [
    "LAST_CHECKPOINT",
    "RELEASE_ONLY_KEYS",
    "TrainingState",
    "save_training_state",
    "resume_training",
    "check_resumable",
    "load_weights",
]

log = logging.getLogger(__name__)

LAST_CHECKPOINT = Path("checkpoints", "last")
"""The checkpoint of a run's last epoch, inside its output folder."""

RELEASE_ONLY_KEYS = ("train.release_holdout", "train.release_seeds")
"""Settings that change the release model alone: a fold (>= 0) resumes when only these differ."""


@dataclass
class TrainingState:
    """What one epoch of training changes, all of it checkpointed but ``objective``: the model and
    its loss in one module (DistributedDataParallel under torchrun), the named random generators
    ("eam", "loss"), Adam, its learning-rate schedule, the fp16 gradient scaler, the batch sampler,
    the weight average (None without ``ema_decay``); the epochs done, the best validation score,
    its epoch (0: none yet) and the epochs' records."""

    model: SERModel
    objective: nn.Module
    generators: dict[str, torch.Generator]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    sampler: LengthBucketSampler
    average: WeightAverage | None
    epoch: int = 0
    best_score: float = -math.inf
    best_epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)

    def averaged(self) -> AbstractContextManager[Any]:
        """The weights that are validated and saved swapped in: the average's, else the model's own."""
        return self.average.swapped_in() if self.average is not None else nullcontext()


def save_training_state(state: TrainingState, folder: Path, config: SERConfig, runtime: Runtime) -> None:
    """Checkpoint ``state`` after its epoch into ``folder`` (every rank gathers its random states;
    rank 0 writes)."""
    rng_states = gather_from_ranks(capture_rng_state(state.generators), runtime)
    if not runtime.is_main:
        return
    saved = {
        "epoch": state.epoch,
        "optimizer": state.optimizer.state_dict(),
        "scheduler": state.scheduler.state_dict(),
        "scaler": state.scaler.state_dict(),
        "sampler": {**state.sampler.state_dict(), "epoch": state.epoch, "position": 0},
        "rng": rng_states,
        "best_score": state.best_score,
        "best_epoch": state.best_epoch,
        "history": state.history,
        "world_size": runtime.world_size,
        "config": config.to_json(),
    }
    if state.average is not None:
        saved["ema"] = state.average.state_dict()
    save_checkpoint(folder, state.model, saved)


def resume_training(
    state: TrainingState, folder: Path, config: SERConfig, runtime: Runtime, ignored: Sequence[str]
) -> None:
    """Continue ``state`` from the checkpoint at ``folder`` when there is one (`check_resumable`
    first, ``ignored`` its keys that may differ); nothing otherwise."""
    found = resolve_checkpoint(folder)
    if found is None:
        return
    saved = load_training_state(found)
    check_resumable(saved, config, found, runtime, ignored)
    load_weights(state.model, found)
    state.optimizer.load_state_dict(saved["optimizer"])
    state.scheduler.load_state_dict(saved["scheduler"])
    state.scaler.load_state_dict(saved["scaler"])
    state.sampler.load_state_dict(saved["sampler"])
    restore_rng_state(saved["rng"][runtime.rank], state.generators)
    if state.average is not None:
        state.average.load_state_dict(saved["ema"])
    state.epoch, state.best_score = saved["epoch"], saved["best_score"]
    state.best_epoch, state.history = saved["best_epoch"], saved["history"]
    log.info(
        "resumed from %s after epoch %d (best %s %.4f at epoch %d)",
        found,
        state.epoch,
        config.train.select_metric,
        state.best_score,
        state.best_epoch,
    )


def check_resumable(
    state: dict[str, Any], config: SERConfig, folder: Path, runtime: Runtime, ignored: Sequence[str] = ()
) -> None:
    """Refuse to resume under a different configuration (epochs may grow, ``ignored`` keys may
    differ) or world size: ConfigError."""
    kept = {"train.epochs": config.train.epochs, **{key: config.value(key) for key in ignored}}
    saved = SERConfig.from_json(state["config"]).with_overrides(kept)
    if saved != config:
        theirs, ours = saved.to_dict(), config.to_dict()
        diff = [
            f"{s}.{k}"
            for s in ours
            if isinstance(ours[s], dict)
            for k in ours[s]
            if ours[s][k] != theirs[s][k]
        ]
        diff += [k for k in ours if not isinstance(ours[k], dict) and ours[k] != theirs[k]]
        raise ConfigError(
            f"{folder}: checkpoint was trained with a different configuration ({diff}); use resume=False or another out_dir"
        )
    if state["world_size"] != runtime.world_size:
        raise ConfigError(
            f"{folder}: checkpoint was written by {state['world_size']} processes, this run has {runtime.world_size}; "
            "resume with the same number of processes"
        )


def load_weights(model: SERModel, folder: Path) -> None:
    """Load a `save_pretrained` folder's weights into `model` in place (strict)."""
    load_model(model, str(folder / WEIGHTS_FILE), strict=True, device=str(next(model.parameters()).device))
