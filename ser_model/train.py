"""Train one fold: data, model, optimiser, loop, checkpoint. Read top to bottom.

    fit(config, manifest, folds, fold, audio_root, out_dir) → FitResult

Protocol. Fold k trains on the fold's training speakers, keeps the epoch with the best
validation score (`TrainConfig.select_metric`, UA by default) on the fold's validation speakers,
and evaluates that checkpoint once on the fold's test speakers, which are never used for
selection. `fold = RELEASE_FOLD` (-1) trains the release model: every speaker except the
validation speakers of fold 0 (which stay held out for checkpoint selection); it has no test split.
With `TrainConfig.release_holdout` False the release model trains on every speaker for the fixed
`epochs` and ships its last epoch: nothing is selected, so nothing is held out. With
`TrainConfig.release_seeds` M > 1 it trains M such models (seeds seed·M … seed·M + M − 1, each in
`out_dir/member-<m>`, each resumable) and ships their ensemble (`ser_model.ensemble`).

Step. Each training batch goes through energy-adaptive mixup (seeded generator, one per rank),
the soft labels through `multi_loss`; Adam with the main parameters at `lr` and the class centers
at `center_lr`, both scaled per update by `lr_factor` (warm-up, then × `lr_decay` per epoch or a
cosine); gradient accumulation over `grad_accum` batches; gradient clipping; bf16/fp16 autocast on CUDA.

Frozen hf backbones. With `model.backbone_mode` "frozen" or "weighted_sum" (and
`train.feature_cache` on), the backbone's hidden states are computed once per utterance and
cached (`ser_model.feature_cache`, default folder `out_dir/../feature-cache`): evaluation always
reads them; training batches read them when EAM and speed perturbation are off, cropped as windows
of the whole utterance's frames. EAM mixes waveforms and speed perturbation resamples them, so with
either on the training batches run live.

Speaker-level normalisation. With `model.fbank_norm = "speaker"` every split's speakers get their
log-mel statistics from that split's own utterances, computed once before training
(`ser_model.speaker_norm`; labels are never used): training speakers from the training rows,
validation and test speakers from theirs. A training crop and an EAM mixture use the statistics of
their (primary) utterance's speaker; `result.json` then says `uses_test_speaker_statistics: true`.

Outputs in `out_dir`: `checkpoints/last` (every epoch, atomic, for exact resume), `best`
(a `save_pretrained` folder of the selected epoch), `metrics.jsonl` (one line per epoch) and
`result.json` (selected epoch, validation and test metrics, the selection rule).

Distributed. Under torchrun (WORLD_SIZE > 1) the loss runs inside DistributedDataParallel
(gloo on CPU, nccl on CUDA); every rank draws its own batches from the length-bucketed sampler,
evaluation shards the utterances and gathers the predictions, only rank 0 writes files.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.torch import load_model
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from data_contracts.folds import fold_rows_by_role
from ser_model.allocator import bound_heap
from ser_model.checkpoint import (
    capture_rng_state,
    load_training_state,
    resolve_checkpoint,
    restore_rng_state,
    save_checkpoint,
    write_folder_atomically,
)
from ser_model.config import SERConfig, TrainConfig
from ser_model.config_validation import ConfigError
from ser_model.data import (
    EVAL_MAX_SECONDS,
    DataSplitError,
    LengthBucketSampler,
    UtteranceDataset,
    collate_padded,
    shard_for_eval,
)
from ser_model.eam import energy_adaptive_mixup
from ser_model.ema import WeightAverage
from ser_model.fbank_backbone import LogMelStatistics
from ser_model.feature_cache import (
    FEATURE_CACHE_DIR,
    CachedStates,
    FeatureCache,
    collate_states,
    forward_batch,
    uses_feature_cache,
)
from ser_model.launch import BEST_FOLDER, METRICS_FILE, RELEASE_FOLD, RESULT_FILE
from ser_model.losses import multi_loss
from ser_model.metrics import (
    HEADLINE_METRICS,
    classification_metrics,
    ensemble_rule,
    last_epoch_rule,
    selection_rule,
)
from ser_model.model import WEIGHTS_FILE, SERModel, SEROutput
from ser_model.speaker_norm import split_statistics
from ser_stack.files import write_atomically

__all__ = [
    "RELEASE_FOLD",
    "EVAL_MAX_SECONDS",
    "FitResult",
    "fit",
    "training_splits",
    "evaluate_split",
    "evaluate_rows",
    "seed_everything",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FitResult:
    """What `fit` produced: the selected epoch (1-based), its validation and test metrics
    (`{}` for the release fold), per-epoch history and the folders written.
    ``test_last_epoch`` (in ``result.json``): the test metrics of the last epoch's weights, beside
    the selected epoch's; a record for choosing how the release model ends (on all speakers for a
    fixed number of epochs, or selected on held-out ones), never used to select.
    ``uses_test_speaker_statistics``: the test speakers were normalised with the log-mel statistics
    of their own (unlabelled) test utterances (``model.fbank_norm = "speaker"``, ``ser_model.speaker_norm``)."""

    out_dir: Path
    best_dir: Path
    selected_epoch: int
    valid: dict[str, Any]
    test: dict[str, Any]
    selection_rule: str
    speakers: dict[str, list[str]]
    history: list[dict[str, Any]] = field(repr=False)
    uses_test_speaker_statistics: bool = False


# ---------------------------------------------------------------------------- setup


@dataclass(frozen=True)
class Runtime:
    """Where this process runs: rank, world size, device, autocast dtype."""

    rank: int
    world_size: int
    device: torch.device
    amp_dtype: torch.dtype | None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(setting: str, local_rank: int = 0) -> torch.device:
    """TrainConfig.device → a torch device ("auto": this rank's GPU when CUDA is present, else CPU)."""
    if setting == "auto":
        setting = "cuda" if torch.cuda.is_available() else "cpu"
    if setting.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"TrainConfig.device={setting!r} but CUDA is not available; use 'auto' or 'cpu'")
    if setting == "cuda":
        return torch.device("cuda", local_rank)
    return torch.device(setting)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """TrainConfig.precision → the autocast dtype, None for fp32.

    "auto": bf16 on a CUDA device that supports it, fp32 otherwise (CPU included).
    """
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    if precision == "fp16" and device.type != "cuda":
        raise RuntimeError(
            "TrainConfig.precision='fp16' needs a CUDA device; use 'auto', 'bf16' or 'fp32' on CPU"
        )
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def init_runtime(config: SERConfig) -> Runtime:
    """Join the torchrun process group when WORLD_SIZE > 1 (nccl on CUDA, gloo on CPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(config.train.device, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Runtime(rank, world_size, device, autocast_dtype(config.train.precision, device))


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def derived_seed(seed: int, *stream: int) -> int:
    """An independent 63-bit seed for (seed, stream...), e.g. (seed, rank, 0) for EAM."""
    return int(np.random.SeedSequence([seed, *stream]).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))


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


def _speakers(rows: pd.DataFrame) -> list[str]:
    return sorted(rows["speaker"].astype(str).unique())


def _row_speakers(rows: pd.DataFrame) -> list[str]:
    return rows["speaker"].astype(str).tolist()


# ---------------------------------------------------------------------------- objective


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
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """x, extent: waves (B, L) and lengths (B,); with ``cached``, cached backbone states (B, K', T, D) and their mask (B, T).
        ``speaker_stats``: each row's speaker statistics (B, n_mels) for a speaker-normalised model."""
        out: SEROutput = (
            self.model.forward_cached(x, extent) if cached else self.model(x, extent, speaker_stats)
        )
        return multi_loss(
            out,
            soft_targets,
            labels,
            self.model.centers,
            self.model.supcon_proj,
            self.model.config.loss,
            self.generator,
        )


@torch.no_grad()
def evaluate_split(
    model: SERModel,
    dataset: UtteranceDataset | CachedStates,
    batch_size: int,
    runtime: Runtime,
    row_stats: LogMelStatistics | None = None,
) -> dict[str, Any]:
    """Predict every utterance of `dataset` (waveforms or cached states; sharded across ranks, gathered) → `classification_metrics`.
    ``row_stats``: a speaker-normalised model's speaker statistics of every row (N, n_mels)."""
    model.eval()
    batches = shard_for_eval(dataset.lengths, batch_size, rank=runtime.rank, world_size=runtime.world_size)
    collate = collate_states if isinstance(dataset, CachedStates) else collate_padded
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches, collate_fn=collate)
    indices, predictions = [], []
    autocast = _autocast(runtime)
    for batch in loader:
        with autocast:
            logits = forward_batch(model, batch, runtime.device, row_stats).logits  # (B, C)
        indices.append(batch.indices)
        predictions.append(logits.argmax(dim=1).cpu())
    local = (
        torch.cat(indices).tolist() if indices else [],
        torch.cat(predictions).tolist() if predictions else [],
    )
    shards = [local]
    if runtime.distributed:
        shards = [None] * runtime.world_size
        dist.all_gather_object(shards, local)
    order = np.concatenate([np.asarray(s[0], dtype=np.int64) for s in shards])
    y_pred = np.empty(len(dataset), dtype=np.int64)
    y_pred[order] = np.concatenate([np.asarray(s[1], dtype=np.int64) for s in shards])
    return classification_metrics(dataset.labels, y_pred, len(model.labels), model.labels)


def evaluate_rows(
    model: SERModel,
    rows: pd.DataFrame,
    audio_root: str | os.PathLike,
    *,
    batch_size: int = 16,
    device: str = "auto",
) -> dict[str, Any]:
    """Metrics of a trained model on manifest rows, in this process (`ser evaluate`). A speaker-normalised
    model gets each speaker's statistics from that speaker's rows here (the manifest's `speaker` column)."""
    dev = resolve_device(device)
    model = model.to(dev)
    mc = model.config.model
    dataset = UtteranceDataset(
        rows,
        audio_root,
        model.labels,
        sample_rate=mc.sample_rate,
        crop_seconds=EVAL_MAX_SECONDS,
        random_crop=False,
        trim_db=mc.trim_db,
    )
    row_stats = (
        split_statistics(model.backbone, dataset.full_wave, _row_speakers(rows), "evaluation", device=dev)
        if mc.uses_speaker_statistics
        else None
    )
    return evaluate_split(
        model, dataset, batch_size, Runtime(0, 1, dev, autocast_dtype("auto", dev)), row_stats
    )


def _autocast(runtime: Runtime):
    if runtime.amp_dtype is None:
        return nullcontext()
    return torch.autocast(runtime.device.type, dtype=runtime.amp_dtype)


def _call(callbacks: Sequence[Any], hook: str, *args: Any) -> None:
    for callback in callbacks:
        method = getattr(callback, hook, None)
        if method is not None:
            method(*args)


def _barrier(runtime: Runtime) -> None:
    if runtime.distributed:
        dist.barrier()


def _mean_across_ranks(values: dict[str, float], runtime: Runtime) -> dict[str, float]:
    if not runtime.distributed or not values:
        return values
    keys = sorted(values)
    tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=runtime.device)
    dist.all_reduce(tensor)
    return {k: float(v) / runtime.world_size for k, v in zip(keys, tensor.tolist())}


# ---------------------------------------------------------------------------- fit


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
) -> FitResult:
    """Train one fold (module docstring) and return the selected checkpoint's metrics.

    callbacks: objects with any of on_epoch_end(epoch, record), on_checkpoint(path),
    on_fit_end(result); called on rank 0 only. resume: continue from out_dir/checkpoints/last
    when it exists (bit-identical to an uninterrupted run on CPU); False starts afresh.
    feature_cache_dir: where a frozen hf backbone's hidden states are cached
    (`ser_model.feature_cache`; default `out_dir/../feature-cache`, shared by the folds).
    score_test: False never loads or scores the fold's test speakers (a tuning study: only
    validation speakers may judge a trial); the result's ``test`` is then ``{}``.
    Raises DataSplitError when a split is empty or holds labels outside config.labels, and
    ConfigError when resuming a checkpoint written under another configuration or world size.
    """
    tc = config.train
    out_dir = Path(out_dir)
    if fold == RELEASE_FOLD and tc.release_seeds > 1:
        return _fit_release_ensemble(
            config, manifest, folds, audio_root, out_dir, callbacks, resume, feature_cache_dir
        )
    bound_heap()  # freed activations go back to the system (ser_model/allocator.py)
    runtime = init_runtime(config)

    # data -------------------------------------------------------------------
    holdout = fold != RELEASE_FOLD or tc.release_holdout  # False: a release on every speaker, last epoch
    splits = training_splits(manifest, folds, fold, holdout=holdout)
    speakers = {name: _speakers(rows) for name, rows in splits.items()}
    required = (
        ("train", "valid", "test") if fold != RELEASE_FOLD else ("train", "valid") if holdout else ("train",)
    )
    for name in required:
        if splits[name].empty:
            raise DataSplitError(
                f"fold {fold}: the {name} split holds no utterance; speakers per role: {speakers}"
            )
    rule = selection_rule(tc.select_metric, speakers) if holdout else last_epoch_rule(tc.epochs)
    log.info("fold %s: %s", fold, {name: len(rows) for name, rows in splits.items()})
    sr, trim_db = config.model.sample_rate, config.model.trim_db
    train_set = UtteranceDataset(
        splits["train"],
        audio_root,
        config.labels,
        sample_rate=sr,
        crop_seconds=tc.max_seconds,
        random_crop=True,
        seed=tc.seed,
        trim_db=trim_db,
        speed_factors=tc.speed_factors,
    )
    eval_sets = {
        name: UtteranceDataset(
            splits[name],
            audio_root,
            config.labels,
            sample_rate=sr,
            crop_seconds=EVAL_MAX_SECONDS,
            random_crop=False,
            trim_db=trim_db,
        )
        for name in ("valid", "test")
        if not splits[name].empty and (score_test or name != "test")
    }
    sampler = LengthBucketSampler(
        train_set.lengths, tc.batch_size, seed=tc.seed, rank=runtime.rank, world_size=runtime.world_size
    )
    loader = torch.utils.data.DataLoader(
        train_set, batch_sampler=sampler, collate_fn=collate_padded, num_workers=tc.num_workers
    )

    # model ------------------------------------------------------------------
    seed_everything(tc.seed)  # identical initial weights on every rank
    model = SERModel(config).to(runtime.device)
    eam_generator = torch.Generator().manual_seed(derived_seed(tc.seed, runtime.rank, 0))
    loss_generator = torch.Generator().manual_seed(derived_seed(tc.seed, runtime.rank, 1))
    generators = {"eam": eam_generator, "loss": loss_generator}
    seed_everything(derived_seed(tc.seed, runtime.rank, 2))  # dropout and masks differ per rank

    # speaker statistics: each split's speakers from that split's own utterances (ser_model.speaker_norm)
    row_stats: dict[str, LogMelStatistics] = {}
    if config.model.uses_speaker_statistics:
        row_stats = {
            name: split_statistics(
                model.backbone, dataset.full_wave, _row_speakers(splits[name]), name, device=runtime.device
            )
            for name, dataset in {"train": train_set, **eval_sets}.items()
        }
    train_stats = row_stats.get("train")

    # feature cache: a frozen hf backbone's hidden states, computed once (ser_model.feature_cache)
    cached_training = False
    if uses_feature_cache(config):
        cache_root = (
            out_dir.parent / FEATURE_CACHE_DIR if feature_cache_dir is None else Path(feature_cache_dir)
        )
        cache = FeatureCache(
            cache_root, model.backbone, trim_db=trim_db, device=runtime.device, amp_dtype=runtime.amp_dtype
        )
        eval_sets = {name: cache.dataset(splits[name], audio_root, config.labels) for name in eval_sets}
        # EAM mixes waveforms and speed perturbation resamples them: with either on, training batches run live
        cached_training = not config.eam.enabled and not tc.speed_factors
        if cached_training:  # same sampler, same batches: only what a batch holds changes
            train_set = cache.dataset(
                splits["train"], audio_root, config.labels, crop_seconds=tc.max_seconds, seed=tc.seed
            )
            loader = torch.utils.data.DataLoader(
                train_set, batch_sampler=sampler, collate_fn=collate_states, num_workers=tc.num_workers
            )
    features = "backbone states: " + (
        "training and evaluation read the feature cache"
        if cached_training
        else "evaluation reads the feature cache, training runs live (EAM or speed perturbation)"
        if uses_feature_cache(config)
        else "live"
    )
    objective: nn.Module = TrainingObjective(model, loss_generator)
    if runtime.distributed:
        objective = DistributedDataParallel(
            objective,
            device_ids=[runtime.device.index] if runtime.device.type == "cuda" else None,
            find_unused_parameters=True,
        )

    # optimiser --------------------------------------------------------------
    groups = [{"params": model.main_parameters(), "lr": tc.lr}]
    if model.center_parameters():
        groups.append({"params": model.center_parameters(), "lr": tc.center_lr})
    optimizer = torch.optim.Adam(groups, weight_decay=tc.weight_decay)
    updates_per_epoch = math.ceil(len(sampler) / tc.grad_accum)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, updates_per_epoch, tc)
    )
    scaler = torch.amp.GradScaler(runtime.device.type, enabled=runtime.amp_dtype == torch.float16)
    trainable = [p for p in model.parameters() if p.requires_grad]
    average = WeightAverage(model, tc.ema_decay) if tc.ema_decay is not None else None
    averaged = (
        average.swapped_in if average is not None else nullcontext
    )  # validate and save the averaged weights

    # resume -----------------------------------------------------------------
    checkpoints = out_dir / "checkpoints" / "last"
    best_dir = out_dir / BEST_FOLDER
    start_epoch, best_score, best_epoch, history = 0, -math.inf, 0, []
    found = resolve_checkpoint(checkpoints) if resume else None
    if found is not None:
        state = load_training_state(found)
        _check_resumable(state, config, found, runtime, () if fold == RELEASE_FOLD else RELEASE_ONLY_KEYS)
        _load_weights(model, found)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        sampler.load_state_dict(state["sampler"])
        restore_rng_state(state["rng"][runtime.rank], generators)
        if average is not None:
            average.load_state_dict(state["ema"])
        start_epoch, best_score, best_epoch, history = (
            state["epoch"],
            state["best_score"],
            state["best_epoch"],
            state["history"],
        )
        log.info(
            "resumed from %s after epoch %d (best %s %.4f at epoch %d)",
            found,
            start_epoch,
            tc.select_metric,
            best_score,
            best_epoch,
        )

    # loop -------------------------------------------------------------------
    n_classes = config.n_classes
    for epoch in range(start_epoch, tc.epochs):
        started = time.perf_counter()
        model.train()
        train_set.set_epoch(epoch)
        sampler.set_epoch(epoch)
        n_batches = len(sampler)
        sums: dict[str, float] = {}
        # a live bar on a terminal only (disable=None): in a log (Prefect, CI) one line per epoch is logged below
        bar = tqdm(
            loader,
            desc=f"epoch {epoch + 1}/{tc.epochs}",
            unit="batch",
            leave=False,
            disable=None if runtime.is_main else True,
        )
        for step, batch in enumerate(bar):
            labels = batch.labels.to(runtime.device)
            targets = F.one_hot(labels, n_classes).float()
            if cached_training:  # windows of cached whole-utterance states; EAM is off
                inputs = (batch.states.to(runtime.device), batch.mask.to(runtime.device))
            else:
                lengths = batch.lengths.to(runtime.device)
                mixed = energy_adaptive_mixup(
                    batch.waves.to(runtime.device),
                    lengths,
                    targets,
                    generator=eam_generator,
                    config=config.eam,
                )
                inputs, targets = (mixed.waves, lengths), mixed.targets  # a mixture keeps its primary's row
            group_start = step - step % tc.grad_accum
            group_size = min(tc.grad_accum, n_batches - group_start)
            update = step == group_start + group_size - 1
            sync = nullcontext() if update or not runtime.distributed else objective.no_sync()
            with sync:
                with _autocast(runtime):
                    total, terms = objective(
                        *inputs,
                        targets,
                        labels,
                        cached=cached_training,
                        speaker_stats=None
                        if train_stats is None
                        else train_stats.rows(batch.indices).to(runtime.device),
                    )
                scaler.scale(total / group_size).backward()
            if update:
                scaler.unscale_(optimizer)
                if tc.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(trainable, tc.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                if average is not None:
                    average.update()
            for name, value in {"loss": total.detach(), **terms}.items():
                sums[name] = sums.get(name, 0.0) + float(value)
            bar.set_postfix(loss=f"{float(total.detach()):.3f}")
        train_terms = _mean_across_ranks({name: value / n_batches for name, value in sums.items()}, runtime)
        lr = optimizer.param_groups[0]["lr"]

        record: dict[str, Any] = {"epoch": epoch + 1, "train": train_terms, "lr": lr}
        if not holdout and epoch + 1 == tc.epochs:  # the release on every speaker ships its last epoch
            best_epoch = epoch + 1
            if runtime.is_main:
                with averaged():
                    write_folder_atomically(best_dir, model.save_pretrained)
        elif holdout and ((epoch + 1) % tc.valid_every == 0 or epoch + 1 == tc.epochs):
            with averaged():
                valid = evaluate_split(
                    model, eval_sets["valid"], tc.eval_batch_size, runtime, row_stats.get("valid")
                )
                record["valid"] = {key: valid[key] for key in HEADLINE_METRICS}
                score = valid[tc.select_metric]
                if score > best_score:
                    best_score, best_epoch = score, epoch + 1
                    if runtime.is_main:
                        write_folder_atomically(best_dir, model.save_pretrained)
        record["seconds"] = time.perf_counter() - started
        history.append(record)

        rng_states = [capture_rng_state(generators)]
        if runtime.distributed:
            rng_states = [None] * runtime.world_size
            dist.all_gather_object(rng_states, capture_rng_state(generators))
        if runtime.is_main:
            state = {
                "epoch": epoch + 1,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "sampler": {**sampler.state_dict(), "epoch": epoch + 1, "position": 0},
                "rng": rng_states,
                "best_score": best_score,
                "best_epoch": best_epoch,
                "history": history,
                "world_size": runtime.world_size,
                "config": config.to_json(),
            }
            if average is not None:
                state["ema"] = average.state_dict()
            save_checkpoint(checkpoints, model, state)
            write_atomically(out_dir / METRICS_FILE, "".join(json.dumps(r) + "\n" for r in history))
            valid_text = " ".join(f"{k} {v:.4f}" for k, v in record.get("valid", {}).items())
            log.info(
                "epoch %d/%d loss %.4f lr %.3g %s (%.1f s; %s)",
                epoch + 1,
                tc.epochs,
                train_terms["loss"],
                lr,
                valid_text,
                record["seconds"],
                features,
            )
            _call(callbacks, "on_checkpoint", checkpoints)
            _call(callbacks, "on_epoch_end", epoch + 1, record)
        _barrier(runtime)

    # selected checkpoint on the held-out speakers ----------------------------
    if best_epoch == 0:
        raise RuntimeError(
            f"{out_dir}: no epoch was validated (epochs={tc.epochs}, valid_every={tc.valid_every})"
        )
    _barrier(runtime)
    test_last_epoch = {}
    last_selected = best_epoch == tc.epochs  # then the selected epoch's test metrics are the last's
    if (
        "test" in eval_sets and not last_selected
    ):  # reported beside the selected epoch's, never used to select
        with averaged():
            test_last_epoch = evaluate_split(
                model, eval_sets["test"], tc.eval_batch_size, runtime, row_stats.get("test")
            )
    _load_weights(model, best_dir)
    valid = (
        evaluate_split(model, eval_sets["valid"], tc.eval_batch_size, runtime, row_stats.get("valid"))
        if "valid" in eval_sets
        else {}
    )
    test = (
        evaluate_split(model, eval_sets["test"], tc.eval_batch_size, runtime, row_stats.get("test"))
        if "test" in eval_sets
        else {}
    )
    if last_selected:
        test_last_epoch = test
    test_speaker_stats = "test" in row_stats
    result = FitResult(
        out_dir, best_dir, best_epoch, valid, test, rule, speakers, history, test_speaker_stats
    )
    if runtime.is_main:
        _write_result(result, fold, tc, test_last_epoch)
        _call(callbacks, "on_fit_end", result)
    _barrier(runtime)
    return result


def _write_result(
    result: FitResult, fold: int, tc: TrainConfig, test_last_epoch: dict[str, Any], **extra: Any
) -> None:
    """``result.json`` of a fit (module docstring): the selected epoch, the rule, the speakers, the
    validation and test metrics and the last epoch's test metrics, and ``extra`` fields."""
    payload = {
        "fold": fold,
        "selected_epoch": result.selected_epoch,
        "select_metric": tc.select_metric,
        "selection_rule": result.selection_rule,
        "speakers": result.speakers,
        "valid": result.valid,
        "test": result.test,
        "test_last_epoch": test_last_epoch,
        "epochs": tc.epochs,
        "uses_test_speaker_statistics": result.uses_test_speaker_statistics,
        **extra,
    }
    write_atomically(result.out_dir / RESULT_FILE, json.dumps(payload, indent=2) + "\n")


def member_seeds(seed: int, members: int) -> list[int]:
    """The seeds of an ensemble release's members: seed·M … seed·M + M − 1 for M = ``members``, so
    that the releases of two base seeds share no member (``TrainConfig.release_seeds``)."""
    return [seed * members + m for m in range(members)]


def _member_record(record: dict[str, Any], member: int, epochs: int) -> dict[str, Any]:
    """An epoch record of ensemble member ``member`` (of ``epochs`` epochs each) as the ensemble's:
    epoch e is member·epochs + e, and the record says which member it is."""
    return {**record, "epoch": member * epochs + record["epoch"], "member": member}


class _MemberCallbacks:
    """The callbacks of an ensemble release, seen from member ``member`` of models of ``epochs``
    epochs each: its epochs numbered after the earlier members' (member m's epoch e is m·epochs + e,
    the record saying ``member``); its checkpoints passed on; its own end not (the ensemble's is)."""

    def __init__(self, callbacks: Sequence[Any], member: int, epochs: int):
        self.callbacks, self.member, self.epochs = callbacks, member, epochs

    def on_epoch_end(self, epoch: int, record: dict[str, Any]) -> None:
        shifted = _member_record(record, self.member, self.epochs)
        _call(self.callbacks, "on_epoch_end", shifted["epoch"], shifted)

    def on_checkpoint(self, path: Path) -> None:
        _call(self.callbacks, "on_checkpoint", path)


def _fit_release_ensemble(
    config: SERConfig,
    manifest: pd.DataFrame,
    folds: pd.DataFrame,
    audio_root: str | os.PathLike,
    out_dir: Path,
    callbacks: Sequence[Any],
    resume: bool,
    feature_cache_dir: str | os.PathLike | None,
) -> FitResult:
    """The release model of ``TrainConfig.release_seeds`` M > 1 (``release_holdout`` False): member m
    is a release on every speaker with seed ``member_seeds(seed, M)[m]``, trained by :func:`fit` in
    ``out_dir/member-<m>`` (a finished one is not trained again, a stopped one resumes); then
    ``out_dir/best`` is their ensemble, ``metrics.jsonl`` their epochs one member after the other
    (``member`` in each record) and ``result.json`` the ensemble's record with each member's."""
    from ser_model.ensemble import SEREnsemble

    tc = config.train
    runtime = init_runtime(config)
    seeds = member_seeds(tc.seed, tc.release_seeds)
    results = []
    for m, seed in enumerate(seeds):
        member_config = config.with_overrides({"train.seed": seed, "train.release_seeds": 1})
        results.append(
            fit(
                member_config,
                manifest,
                folds,
                RELEASE_FOLD,
                audio_root,
                out_dir / f"member-{m}",
                callbacks=[_MemberCallbacks(callbacks, m, tc.epochs)],
                resume=resume,
                feature_cache_dir=feature_cache_dir,  # None: fit's default, out_dir/feature-cache for every member
            )
        )
    history = [_member_record(record, m, tc.epochs) for m, r in enumerate(results) for record in r.history]
    rule = ensemble_rule(seeds, tc.epochs)
    best_dir = out_dir / BEST_FOLDER
    result = FitResult(out_dir, best_dir, tc.epochs, {}, {}, rule, results[0].speakers, history)
    if runtime.is_main:
        members = [SERModel.from_pretrained(r.best_dir) for r in results]
        write_folder_atomically(best_dir, SEREnsemble(members, config).save_pretrained)
        write_atomically(out_dir / METRICS_FILE, "".join(json.dumps(r) + "\n" for r in history))
        members_record = [
            {"seed": seed, "folder": f"member-{m}", "selected_epoch": r.selected_epoch}
            for m, (seed, r) in enumerate(zip(seeds, results))
        ]
        _write_result(result, RELEASE_FOLD, tc, {}, members=members_record)
        _call(callbacks, "on_fit_end", result)
    _barrier(runtime)
    return result


def _load_weights(model: SERModel, folder: Path) -> None:
    """Load a `save_pretrained` folder's weights into `model` in place (strict)."""
    load_model(model, str(folder / WEIGHTS_FILE), strict=True, device=str(next(model.parameters()).device))


RELEASE_ONLY_KEYS = ("train.release_holdout", "train.release_seeds")
"""Settings that change the release model alone: a fold (>= 0) resumes when only these differ."""


def _check_resumable(
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
