"""Train one fold: data, model, optimiser, resume, the epochs, the final test. Read `fit` top to bottom.

    fit(config, manifest, folds, fold, audio_root, out_dir) → FitResult

Protocol. Fold k trains on the fold's training speakers, keeps the epoch with the best
validation score (`TrainConfig.select_metric`, UA by default) on the fold's validation speakers,
and evaluates that checkpoint once on the fold's test speakers, which are never used for
selection. `fold = RELEASE_FOLD` (-1) trains the release model: every speaker except the
validation speakers of fold 0 (which stay held out for checkpoint selection); it has no test split.
With `TrainConfig.release_holdout` False the release model trains on every speaker for the fixed
`epochs` and ships its last epoch: nothing is selected, so nothing is held out. With
`TrainConfig.release_seeds` M > 1 it is an ensemble of M such models (`ser_model.release`).

Step. Each training batch goes through energy-adaptive mixup (seeded generator, one per rank),
the soft labels through `multi_loss`; Adam with the main parameters at `lr` and the class centers
at `center_lr`, both scaled per update by `lr_factor` (warm-up, then × `lr_decay` per epoch or a
cosine); gradient accumulation over `grad_accum` batches; gradient clipping; bf16/fp16 autocast on CUDA.

The data a fold reads, speaker-level statistics and a frozen backbone's feature cache:
`ser_model.training_data`. Ranks, devices and precision under torchrun (every rank draws its own
batches, evaluation shards the utterances and gathers the predictions, only rank 0 writes files):
`ser_model.runtime`. Scoring a split: `ser_model.evaluation`. The checkpoint and exact resume:
`ser_model.resume`.

Outputs in `out_dir`: `checkpoints/last` (every epoch, atomic, for exact resume), `best`
(a `save_pretrained` folder of the selected epoch), `metrics.jsonl` (one line per epoch) and
`result.json` (selected epoch, validation and test metrics, the selection rule, the calibration,
the data and code version; `ser_model.fit_result`, `ser_model.model_card.fit_provenance`), and
`best/MODEL_CARD.md` generated from that result (`ser_model.model_card`).

Calibration (`ser_model.calibration`). After its epoch is selected, a fold fits one temperature on
its validation speakers' logits (NLL) and reports ECE, Brier and NLL before and after on its test
speakers; the release model takes the median temperature of the fold results beside its folder
(``<out_dir>/../fold-<k>/result.json``, those finished when it ends; T = 1, said so, when there are
none). The temperature is written into ``best`` (`CALIBRATION_FILE`), which every inference path reads.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from data_contracts.folds import fold_rows_by_role
from ser_model.allocator import bound_heap
from ser_model.calibration import (
    calibration_record,
    fold_results_beside,
    model_folder_calibration,
    release_temperature,
    write_calibration,
)
from ser_model.config import SERConfig, TrainConfig
from ser_model.data import Batch
from ser_model.distil import Teacher, distillation_record, student_loss, student_targets
from ser_model.eam import energy_adaptive_mixup
from ser_model.ema import WeightAverage
from ser_model.errors import DataSplitError
from ser_model.evaluation import split_logits
from ser_model.fbank_backbone import LogMelStatistics
from ser_model.feature_cache import StatesBatch
from ser_model.feature_cache_folder import FEATURE_CACHE_DIR
from ser_model.fit_result import FitResult, call_hook, write_history, write_result
from ser_model.launch import BEST_FOLDER, RELEASE_FOLD
from ser_model.losses import multi_loss
from ser_model.model import SERModel, SEROutput
from ser_model.model_card import fit_provenance, write_fit_card
from ser_model.release import fit_release_ensemble
from ser_model.resume import (
    LAST_CHECKPOINT,
    RELEASE_ONLY_KEYS,
    TrainingState,
    resume_training,
    save_training_state,
)
from ser_model.runtime import (
    Runtime,
    autocast,
    barrier,
    derived_seed,
    init_runtime,
    mean_across_ranks,
    seed_everything,
)
from ser_model.selection import score_selected_checkpoint, validate_and_select
from ser_model.training_data import (
    FoldData,
    add_speaker_statistics,
    fold_data,
    read_feature_cache,
    read_pitch_tracks,
    split_speakers,
)
from ser_model.warm_start import InitModel, warm_start

__all__ = ["fit", "training_splits", "lr_factor", "TrainingObjective"]

log = logging.getLogger(__name__)


def fit(
    config: SERConfig,
    manifest: pd.DataFrame,
    folds: pd.DataFrame,
    fold: int,
    audio_root: str | os.PathLike,
    out_dir: str | os.PathLike,
    callbacks: Sequence[Any] = (),
    resume: bool = True,
    feature_cache_dir: str | os.PathLike | None = None,
    score_test: bool = True,
    init: InitModel | None = None,
    teacher: Teacher | None = None,
) -> FitResult:
    """Train one fold (module docstring) and return the selected checkpoint's metrics.

    callbacks: objects with any of on_epoch_end(epoch, record), on_checkpoint(path),
    on_fit_end(result); called on rank 0 only. resume: continue from out_dir/checkpoints/last
    when it exists (bit-identical to an uninterrupted run on CPU); False starts afresh.
    feature_cache_dir: where a frozen hf backbone's hidden states are cached
    (`ser_model.feature_cache`; default `out_dir/../feature-cache`, shared by the folds).
    score_test: False never loads or scores the fold's test speakers (a tuning study: only
    validation speakers may judge a trial); the result's ``test`` is then ``{}``.
    init: start from that model's weights (`ser_model.warm_start`: backbone and FLAM, the head when
    the classes match); result.json's ``init`` records what was copied (null: from scratch).
    teacher: train a student of it on the training speakers (`ser_model.distil`; result.json's ``distillation``).
    Raises DataSplitError when a split is empty or holds labels outside config.labels, and
    ConfigError when resuming a checkpoint written under another configuration or world size.
    """
    tc = config.train
    out_dir = Path(out_dir)
    if fold == RELEASE_FOLD and tc.release_seeds > 1:
        return fit_release_ensemble(
            partial(fit, init=init),
            config,
            manifest,
            folds,
            audio_root,
            out_dir,
            callbacks,
            resume,
            feature_cache_dir,
        )
    bound_heap()  # freed activations go back to the system (ser_model/allocator.py)
    runtime = init_runtime(config)

    # data: the fold's splits, their datasets, this rank's training batches
    holdout = fold != RELEASE_FOLD or tc.release_holdout  # False: a release on every speaker, last epoch
    splits = checked_splits(manifest, folds, fold, holdout)
    data = fold_data(config, splits, audio_root, runtime, score_test)

    # model, and what its backbone computes once: speaker statistics, a frozen backbone's states
    model, generators = seeded_model(config, runtime)
    init_record = warm_start(model, init) if init is not None else None
    add_speaker_statistics(data, model, runtime)
    cache_root = out_dir.parent / FEATURE_CACHE_DIR if feature_cache_dir is None else Path(feature_cache_dir)
    read_feature_cache(data, config, model, audio_root, cache_root, runtime)
    read_pitch_tracks(data, config, cache_root)
    data.teacher = student_targets(teacher, config, data, audio_root, runtime)

    # optimiser, then the checkpoint of a stopped run
    state = training_state(model, generators, data, config, runtime)
    if resume:
        ignored = () if fold == RELEASE_FOLD else RELEASE_ONLY_KEYS
        resume_training(state, out_dir / LAST_CHECKPOINT, config, runtime, ignored)

    # the epochs: train, validate and select, checkpoint
    best_dir = out_dir / BEST_FOLDER
    for _ in range(state.epoch, tc.epochs):
        started = time.perf_counter()
        record = train_one_epoch(state, data, config, runtime)
        validate_and_select(state, record, data, config, runtime, best_dir, holdout)
        record["seconds"] = time.perf_counter() - started
        state.history.append(record)
        checkpoint_epoch(state, record, data, config, runtime, out_dir, callbacks)

    # final test: the selected checkpoint on the held-out speakers; save
    result, test_last_epoch = score_selected_checkpoint(
        state, data, config, runtime, out_dir, best_dir, holdout
    )

    # calibration: a temperature on the validation speakers, judged on the test speakers
    result = replace(result, calibration=calibrate_selected(state, data, config, runtime, fold, out_dir))
    if runtime.is_main:
        write_calibration(best_dir, model_folder_calibration(result.calibration))
        provenance = {**fit_provenance(manifest, splits), **distillation_record(teacher, tc)}
        write_result(result, fold, tc, test_last_epoch, init=init_record, **provenance)
        write_fit_card(out_dir, config, fold)
        call_hook(callbacks, "on_fit_end", result)
    barrier(runtime)
    return result


# ---------------------------------------------------------------------------- data


def training_splits(
    manifest: pd.DataFrame, folds: pd.DataFrame, fold: int, holdout: bool = True
) -> dict[str, pd.DataFrame]:
    """{"train", "valid", "test"}: the manifest rows a training run of `fold` uses. A fold >= 0 is
    the fold table's roles (`data_contracts.folds.fold_rows_by_role`); for RELEASE_FOLD every
    speaker but fold 0's validation speakers trains, those validate, and the test split is empty.
    ``holdout`` False (the release model of ``TrainConfig.release_holdout`` False): the release
    model's validation speakers train too and its validation split is empty; folds >= 0 ignore it."""
    if fold == RELEASE_FOLD:
        base = fold_rows_by_role(manifest, folds, 0)
        empty = base["test"].iloc[:0]
        train = [base["train"], base["test"]] + ([] if holdout else [base["valid"]])
        return {
            "train": pd.concat(train),
            "valid": base["valid"] if holdout else empty,
            "test": empty,
        }
    if fold < 0:
        raise DataSplitError(f"fold must be >= 0 or RELEASE_FOLD ({RELEASE_FOLD}), got {fold}")
    return fold_rows_by_role(manifest, folds, fold)


def checked_splits(
    manifest: pd.DataFrame, folds: pd.DataFrame, fold: int, holdout: bool
) -> dict[str, pd.DataFrame]:
    """`training_splits`, refused (DataSplitError) when a split the run needs is empty: train,
    valid and test for a fold; train and valid for the release model, train alone without holdout."""
    splits = training_splits(manifest, folds, fold, holdout=holdout)
    required = (
        ("train", "valid", "test") if fold != RELEASE_FOLD else ("train", "valid") if holdout else ("train",)
    )
    for name in required:
        if splits[name].empty:
            raise DataSplitError(
                f"fold {fold}: the {name} split holds no utterance; speakers per role: {split_speakers(splits)}"
            )
    log.info("fold %s: %s", fold, {name: len(rows) for name, rows in splits.items()})
    return splits


def calibrate_selected(
    state: TrainingState, data: FoldData, config: SERConfig, runtime: Runtime, fold: int, out_dir: Path
) -> dict[str, Any]:
    """The selected checkpoint's calibration (module docstring): a fold's `calibration_record` from
    its validation and test logits; the release's `release_temperature` of the fold results beside
    ``out_dir``; ``{}`` for a fold whose test speakers are not scored (a tuning trial)."""
    if fold == RELEASE_FOLD:
        return release_temperature(fold_results_beside(out_dir))
    if "test" not in data.eval_sets:
        return {}
    batch_size = config.train.eval_batch_size
    logits = {
        name: split_logits(state.model, data.eval_sets[name], batch_size, runtime, data.row_stats.get(name))
        for name in ("valid", "test")
    }
    return calibration_record(
        logits["valid"], data.eval_sets["valid"].labels, logits["test"], data.eval_sets["test"].labels
    )


# ---------------------------------------------------------------------------- model and optimiser


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


# ---------------------------------------------------------------------------- one epoch


def train_one_epoch(
    state: TrainingState, data: FoldData, config: SERConfig, runtime: Runtime
) -> dict[str, Any]:
    """One pass over this rank's training batches, an optimiser update every ``grad_accum`` of them.
    Returns the epoch's record: its number (1-based), the loss terms' means over batches and ranks, the lr."""
    tc = config.train
    state.model.train()
    data.train_set.set_epoch(state.epoch)
    data.sampler.set_epoch(state.epoch)
    n_batches = len(data.sampler)
    train_stats = data.row_stats.get("train")
    sums: dict[str, float] = {}
    # a live bar on a terminal only (disable=None): in a log (Prefect, CI) one line per epoch is logged
    bar = tqdm(
        data.loader,
        desc=f"epoch {state.epoch + 1}/{tc.epochs}",
        unit="batch",
        leave=False,
        disable=None if runtime.is_main else True,
    )
    for step, batch in enumerate(bar):
        inputs, targets, labels = batch_inputs(
            batch, data.cached_training, state.generators["eam"], config, runtime
        )
        group_start = step - step % tc.grad_accum
        group_size = min(tc.grad_accum, n_batches - group_start)
        update = step == group_start + group_size - 1
        sync = nullcontext() if update or not runtime.distributed else state.objective.no_sync()
        with sync:
            with autocast(runtime):
                total, terms = state.objective(
                    *inputs,
                    targets,
                    labels,
                    cached=data.cached_training,
                    speaker_stats=None
                    if train_stats is None
                    else train_stats.rows(batch.indices).to(runtime.device),
                    pitch=None
                    if data.pitch_tracks is None
                    else data.pitch_tracks.batch(batch.indices, batch.waves.shape[1]).to(runtime.device),
                    teacher=data.teacher_rows(batch.indices, runtime.device),
                )
            state.scaler.scale(total / group_size).backward()
        if update:
            optimiser_update(state, tc)
        for name, value in {"loss": total.detach(), **terms}.items():
            sums[name] = sums.get(name, 0.0) + float(value)
        bar.set_postfix(loss=f"{float(total.detach()):.3f}")
    state.epoch += 1
    train_terms = mean_across_ranks({name: value / n_batches for name, value in sums.items()}, runtime)
    return {"epoch": state.epoch, "train": train_terms, "lr": state.optimizer.param_groups[0]["lr"]}


def batch_inputs(
    batch: Batch | StatesBatch,
    cached: bool,
    eam_generator: torch.Generator,
    config: SERConfig,
    runtime: Runtime,
) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor, torch.Tensor]:
    """A training batch on the device: the model's inputs (waves (B, L) and lengths (B,) after EAM,
    or, ``cached``, backbone states (B, K', T, D) and their mask (B, T)), soft targets (B, C), labels (B,)."""
    labels = batch.labels.to(runtime.device)
    targets = F.one_hot(labels, config.n_classes).float()
    if cached:  # windows of cached whole-utterance states; EAM is off
        return (batch.states.to(runtime.device), batch.mask.to(runtime.device)), targets, labels
    lengths = batch.lengths.to(runtime.device)
    mixed = energy_adaptive_mixup(
        batch.waves.to(runtime.device), lengths, targets, generator=eam_generator, config=config.eam
    )
    return (mixed.waves, lengths), mixed.targets, labels  # a mixture keeps its primary's row


def optimiser_update(state: TrainingState, tc: TrainConfig) -> None:
    """One update from the accumulated gradients: unscale, clip, step, schedule, average."""
    state.scaler.unscale_(state.optimizer)
    if tc.grad_clip is not None:
        trainable = [p for p in state.model.parameters() if p.requires_grad]
        torch.nn.utils.clip_grad_norm_(trainable, tc.grad_clip)
    state.scaler.step(state.optimizer)
    state.scaler.update()
    state.optimizer.zero_grad(set_to_none=True)
    state.scheduler.step()
    if state.average is not None:
        state.average.update()


# ---------------------------------------------------------------------------- checkpoint


def checkpoint_epoch(
    state: TrainingState,
    record: dict[str, Any],
    data: FoldData,
    config: SERConfig,
    runtime: Runtime,
    out_dir: Path,
    callbacks: Sequence[Any],
) -> None:
    """After an epoch: its checkpoint and ``metrics.jsonl``, one log line, the callbacks; then every
    rank waits for rank 0."""
    checkpoint = out_dir / LAST_CHECKPOINT
    save_training_state(state, checkpoint, config, runtime)
    if runtime.is_main:
        write_history(out_dir, state.history)
        valid_text = " ".join(f"{k} {v:.4f}" for k, v in record.get("valid", {}).items())
        log.info(
            "epoch %d/%d loss %.4f lr %.3g %s (%.1f s; %s)",
            record["epoch"],
            config.train.epochs,
            record["train"]["loss"],
            record["lr"],
            valid_text,
            record["seconds"],
            data.features,
        )
        call_hook(callbacks, "on_checkpoint", checkpoint)
        call_hook(callbacks, "on_epoch_end", record["epoch"], record)
    barrier(runtime)
