"""A fold's data as training reads it: the datasets of its splits, the length-bucketed training
batches, each split's speaker statistics and the views of a frozen backbone's feature cache.

Training crops at random (`TrainConfig.max_seconds`, seeded per epoch and utterance); evaluation
reads every utterance whole (up to `EVAL_MAX_SECONDS`). Every rank draws its own training batches
from the `LengthBucketSampler`.

Speaker-level normalisation. With `model.fbank_norm = "speaker"` every split's speakers get their
log-mel statistics from that split's own utterances, computed once before training
(`ser_model.speaker_norm`; labels are never used): training speakers from the training rows,
validation and test speakers from theirs. A training crop and an EAM mixture use the statistics of
their (primary) utterance's speaker.

Frozen hf backbones. With `model.backbone_mode` "frozen" or "weighted_sum" (and
`train.feature_cache` on), the backbone's hidden states are computed once per utterance and
cached (`ser_model.feature_cache`): evaluation always reads them; training batches read them when
EAM and speed perturbation are off, cropped as windows of the whole utterance's frames, from the
same sampler (same batches: only what a batch holds changes). EAM mixes waveforms and speed
perturbation resamples them, so with either on the training batches run live.

Pitch. With `model.pitch` (and EAM and speed perturbation off, for the same reason) the training
crops' pitch features are windows of each file's whole-utterance track, computed once and cached
beside the backbone states (`ser_model.pitch_cache`); evaluation computes them in the forward pass.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from ser_model.config import SERConfig, uses_feature_cache
from ser_model.data import EVAL_MAX_SECONDS, LengthBucketSampler, UtteranceDataset, collate_for
from ser_model.evaluation import row_speakers
from ser_model.fbank_backbone import LogMelStatistics
from ser_model.feature_cache import CachedStates, FeatureCache, collate_states
from ser_model.model import SERModel
from ser_model.pitch_cache import PitchTracks
from ser_model.runtime import Runtime
from ser_model.speaker_norm import split_statistics

__all__ = [
    "FoldData",
    "split_speakers",
    "fold_data",
    "add_speaker_statistics",
    "read_feature_cache",
    "read_pitch_tracks",
]


@dataclass
class FoldData:
    """What a fit trains and evaluates on. ``eval_sets``: "valid" and "test" where the split holds
    rows (and the test is scored); ``row_stats``: each split's per-row speaker statistics (N, n_mels)
    for a speaker-normalised model, else empty; ``cached_training``: training batches hold cached
    backbone states; ``features``: where the backbone states come from, for the epoch's log line;
    ``pitch_tracks``: the cached pitch tracks the training crops read (None: computed in the forward pass);
    ``teacher``: a student's targets, its teacher's p̄ of every training row (N, C) (``ser_model.distil``)."""

    splits: dict[str, pd.DataFrame]
    train_set: UtteranceDataset | CachedStates
    sampler: LengthBucketSampler
    loader: torch.utils.data.DataLoader
    eval_sets: dict[str, UtteranceDataset | CachedStates]
    row_stats: dict[str, LogMelStatistics] = field(default_factory=dict)
    cached_training: bool = False
    features: str = "backbone states: live"
    pitch_tracks: PitchTracks | None = None
    teacher: torch.Tensor | None = None

    def teacher_rows(self, indices: torch.Tensor, device: torch.device) -> torch.Tensor | None:
        """The teacher's p̄ of a batch's training rows (B, C) on ``device``; None without a teacher."""
        return None if self.teacher is None else self.teacher[indices].to(device)


def split_speakers(splits: dict[str, pd.DataFrame]) -> dict[str, list[str]]:
    """Each split's speakers, sorted."""
    return {name: sorted(rows["speaker"].astype(str).unique()) for name, rows in splits.items()}


def fold_data(
    config: SERConfig,
    splits: dict[str, pd.DataFrame],
    audio_root: str | os.PathLike,
    runtime: Runtime,
    score_test: bool,
) -> FoldData:
    """The datasets of ``splits`` and this rank's training batches (waveforms, read live)."""
    tc = config.train
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
        train_set,
        batch_sampler=sampler,
        collate_fn=collate_for(config.model.is_hf, sr),
        num_workers=tc.num_workers,
    )
    return FoldData(splits, train_set, sampler, loader, eval_sets)


def add_speaker_statistics(data: FoldData, model: SERModel, runtime: Runtime) -> None:
    """A speaker-normalised model: each split's speakers' statistics from that split's own utterances."""
    if not model.config.model.uses_speaker_statistics:
        return
    data.row_stats = {
        name: split_statistics(
            model.backbone, dataset.full_wave, row_speakers(data.splits[name]), name, device=runtime.device
        )
        for name, dataset in {"train": data.train_set, **data.eval_sets}.items()
    }


def read_feature_cache(
    data: FoldData,
    config: SERConfig,
    model: SERModel,
    audio_root: str | os.PathLike,
    cache_root: Path,
    runtime: Runtime,
) -> None:
    """A frozen hf backbone: evaluation (and, without EAM and speed perturbation, training) reads the
    hidden states cached under ``cache_root``, computing the missing ones first."""
    if not uses_feature_cache(config):
        return
    tc = config.train
    cache = FeatureCache(
        cache_root,
        model.backbone,
        trim_db=config.model.trim_db,
        device=runtime.device,
        amp_dtype=runtime.amp_dtype,
    )
    data.eval_sets = {
        name: cache.dataset(data.splits[name], audio_root, config.labels) for name in data.eval_sets
    }
    data.cached_training = not config.eam.enabled and not tc.speed_factors
    if data.cached_training:
        data.train_set = cache.dataset(
            data.splits["train"], audio_root, config.labels, crop_seconds=tc.max_seconds, seed=tc.seed
        )
        data.loader = torch.utils.data.DataLoader(
            data.train_set, batch_sampler=data.sampler, collate_fn=collate_states, num_workers=tc.num_workers
        )
        data.features = "backbone states: training and evaluation read the feature cache"
    else:
        data.features = "backbone states: evaluation reads the feature cache, training runs live (EAM or speed perturbation)"


def read_pitch_tracks(data: FoldData, config: SERConfig, cache_root: Path) -> None:
    """``model.pitch`` without EAM and speed perturbation: the training rows' pitch tracks, read from
    ``cache_root`` or computed there first; the training crops then read them (module docstring)."""
    if not config.model.pitch or config.eam.enabled or config.train.speed_factors:
        return
    sha256s = data.splits["train"]["sha256"].astype(str).tolist()
    data.pitch_tracks = PitchTracks(cache_root, data.train_set, sha256s, config.model.trim_db)
    data.features += "; pitch: training crops read the cached tracks"
