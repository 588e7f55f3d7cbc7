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
cosine; `ser_model.optimisation`); gradient accumulation over `grad_accum` batches; gradient clipping; bf16/fp16 autocast on CUDA.

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
from ser_model.distil import Teacher, distillation_record, student_targets
from ser_model.eam import energy_adaptive_mixup
from ser_model.errors import DataSplitError
from ser_model.evaluation import split_logits
from ser_model.feature_cache import StatesBatch
from ser_model.feature_cache_folder import FEATURE_CACHE_DIR
from ser_model.fit_result import FitResult, call_hook, write_history, write_result
from ser_model.launch import BEST_FOLDER, RELEASE_FOLD
from ser_model.model_card import fit_provenance, write_fit_card
from ser_model.optimisation import seeded_model, training_state
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
    init_runtime,
    mean_across_ranks,
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

__all__ = ["fit", "training_splits", "checked_splits", "train_one_epoch"]

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
