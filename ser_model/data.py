"""Utterances from a manifest as padded batches: dataset, collate, length-bucketed sampler.

The dataset reads the manifest contract (docs/ARCHITECTURE.md): `path` relative to the audio
root (and resolving inside it: `..`, absolute paths and symlinks leading out are refused), `label` among the configured class names, `duration_s` for bucketing. A split whose
audio fits the in-memory cache budget (:func:`memory_cache_bytes`, ``SER_MEMORY_CACHE_BYTES``,
default 1 GiB: about 4.6 hours at 16 kHz float32) is decoded once into memory, silence-trimmed
(RAVDESS fold 0: 840 training files, 156 MB), so that data loading does not dominate a training
step; a longer split is decoded item by item every epoch, so that memory does not grow with the
corpus's length.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from data_contracts.errors import SourceError
from data_contracts.source import resolve_inside
from ser_model.audio import load_audio, speed_perturb, trim_silence
from ser_model.config_validation import ConfigError
from ser_model.errors import DataSplitError
from ser_stack.environment import SettingsError
from ser_stack.process_settings import ProcessSettings

__all__ = [
    "random_crop_start",
    "DataSplitError",
    "memory_cache_bytes",
    "Batch",
    "audio_files",
    "UtteranceDataset",
    "collate_padded",
    "collate_to_shapes",
    "collate_for",
    "PAD_SECONDS",
    "encode_labels",
    "LengthBucketSampler",
    "shard_for_eval",
]

log = logging.getLogger(__name__)

#: the inference policy, one for validation, evaluation, `ser predict`, the MLflow pyfunc and ONNX:
#: the model sees the whole (silence-trimmed) utterance up to this long; longer ones are centre-cropped
#: by evaluation and cut into windows of this length by `ser_model.inference.Predictor`
EVAL_MAX_SECONDS = 60.0


def random_crop_start(length: int, crop: int | None, seed: int, epoch: int, index: int) -> int:
    """Start of the training crop of an utterance ``length`` long (samples or cached frames): 0 when
    it fits in ``crop`` (or no crop), else uniform in [0, length − crop], drawn from (seed, epoch,
    index) alone, so a resumed run crops as the uninterrupted one did."""
    if crop is None or length <= crop:
        return 0
    return int(np.random.default_rng([seed, epoch, index]).integers(0, length - crop + 1))


SPEED_STREAM = 1
"""The last word of the seed of a speed factor's draw, so that it never shares a stream with the crop's."""


def speed_factor(factors: Sequence[float], seed: int, epoch: int, index: int) -> float:
    """The speed factor of training utterance ``index`` in ``epoch`` (``TrainConfig.speed_factors``):
    uniform over ``factors``, drawn from (seed, epoch, index) alone, so a resumed run perturbs as the
    uninterrupted one did; 1.0 when there are none."""
    if not factors:
        return 1.0
    return float(
        factors[int(np.random.default_rng([seed, epoch, index, SPEED_STREAM]).integers(len(factors)))]
    )


def memory_cache_bytes(env: Mapping[str, str] | None = None) -> int:
    """Bytes of decoded audio a split may keep in memory (and of backbone states a
    `ser_model.feature_cache.FeatureCache`): ``SER_MEMORY_CACHE_BYTES`` of ``env`` (default: this
    process's; 0 never caches; `ser_stack.process_settings.ProcessSettings`). ConfigError for a bad value."""
    try:
        return ProcessSettings.from_env(env).memory_cache_bytes
    except SettingsError as err:
        raise ConfigError(str(err)) from None


class Batch(NamedTuple):
    """A padded batch: waves (B, L) zero-padded, lengths (B,) valid samples, labels (B,), indices (B,)."""

    waves: torch.Tensor
    lengths: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor


def encode_labels(manifest: pd.DataFrame, label_names: Sequence[str]) -> np.ndarray:
    """Class indices of the manifest's `label` column in the order of `label_names`, shape (N,) int64."""
    index = {name: i for i, name in enumerate(label_names)}
    unknown = sorted(set(manifest["label"]) - index.keys())
    if unknown:
        first = manifest.loc[manifest["label"].isin(unknown), "utt_id"].iloc[0]
        raise DataSplitError(
            f"labels {unknown} (e.g. utterance {first}) are not among the configured classes {list(label_names)}"
        )
    return manifest["label"].map(index).to_numpy(dtype=np.int64)


def audio_files(audio_root: str | os.PathLike, paths: Sequence[str], utt_ids: Sequence[str]) -> list[str]:
    """Real paths of the manifest's files, each checked to resolve inside `audio_root`.

    Raises SourceError naming the utterance when a path is absolute, holds `..`, or goes
    through a symlink leading outside the root.
    """
    root_real = os.path.realpath(audio_root)
    files = []
    for path, utt_id in zip(paths, utt_ids):
        try:
            files.append(resolve_inside(root_real, path))
        except SourceError as err:
            raise SourceError(err.reason_code, f"manifest row {utt_id}: {err}") from err
    return files


class UtteranceDataset(torch.utils.data.Dataset):
    """Manifest rows → (wave (L,) float32, label, row index).

    Training (`random_crop=True`): utterances longer than `crop_seconds` are cut to a random
    window whose start depends only on (seed, epoch, index), so a resumed run sees the same crops.
    Evaluation (`random_crop=False`): the full utterance, centre-cropped to `crop_seconds` if longer.
    `trim_db` (ModelConfig.trim_db): leading and trailing silence is cut on decoding (`trim_silence`),
    before any crop. `speed_factors` (training only, TrainConfig.speed_factors): each item is first
    played at the factor `speed_factor` draws for it (`speed_perturb`), then cropped. Call
    `set_epoch` before each epoch.
    """

    def __init__(
        self,
        manifest: pd.DataFrame,
        audio_root: str | os.PathLike,
        label_names: Sequence[str],
        *,
        sample_rate: int,
        crop_seconds: float | None,
        random_crop: bool,
        seed: int = 0,
        preload: bool | None = None,
        trim_db: float | None = None,
        speed_factors: Sequence[float] = (),
    ):
        if len(manifest) == 0:
            raise DataSplitError("the split holds no utterances; expected at least one manifest row")
        if crop_seconds is not None and crop_seconds <= 0:
            raise ValueError(f"crop_seconds must be positive or None, got {crop_seconds}")
        if speed_factors and not random_crop:
            raise ValueError(
                "speed_factors perturb training items only; evaluation audio (random_crop=False) never changes"
            )
        self.speed_factors = tuple(float(f) for f in speed_factors)
        self.audio_root = Path(audio_root)
        self.paths = manifest["path"].astype(str).tolist()
        self.utt_ids = manifest["utt_id"].astype(str).tolist()
        self.files = audio_files(self.audio_root, self.paths, self.utt_ids)
        self.labels = encode_labels(manifest, label_names)
        self.sample_rate = sample_rate
        self.crop_samples = None if crop_seconds is None else max(1, int(round(crop_seconds * sample_rate)))
        self.random_crop = random_crop
        self.trim_db = trim_db
        self.seed = seed
        self.epoch = 0
        full = np.ceil(manifest["duration_s"].to_numpy(dtype=np.float64) * sample_rate).astype(np.int64)
        self.lengths = full if self.crop_samples is None else np.minimum(full, self.crop_samples)
        if preload is None:
            preload = int(full.sum()) * 4 <= memory_cache_bytes()
        self._cache: list[np.ndarray] | None = None
        if preload:
            self._cache = [  # copies of the trimmed spans: a view would keep the whole decoded file
                self._decode(i).copy()
                for i in tqdm(
                    range(len(self.paths)), desc="decoding audio", unit="file", leave=False, disable=None
                )
            ]
            decoded = np.array(
                [len(wave) for wave in self._cache], dtype=np.int64
            )  # trimmed: shorter than duration_s
            self.lengths = decoded if self.crop_samples is None else np.minimum(decoded, self.crop_samples)

    @property
    def in_memory(self) -> bool:
        """Whether the split's decoded audio is held in memory (else decoded item by item)."""
        return self._cache is not None

    def _decode(self, i: int) -> np.ndarray:
        return trim_silence(load_audio(self.files[i], self.sample_rate), self.sample_rate, self.trim_db)

    def full_wave(self, index: int) -> np.ndarray:
        """Utterance `index` whole, as decoded and silence-trimmed, before any crop (from memory when cached)."""
        return self._cache[index] if self._cache is not None else self._decode(index)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.paths)

    def crop_start(self, index: int, length: int) -> int:
        """Start sample of the window kept from an utterance of `length` samples."""
        if self.crop_samples is None or length <= self.crop_samples:
            return 0
        if not self.random_crop:
            return (length - self.crop_samples) // 2
        return random_crop_start(length, self.crop_samples, self.seed, self.epoch, index)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        wave = self.full_wave(index)
        if self.speed_factors:
            factor = speed_factor(self.speed_factors, self.seed, self.epoch, index)
            wave = speed_perturb(wave, factor, self.sample_rate)
        start = self.crop_start(index, len(wave))
        if self.crop_samples is not None:
            wave = wave[start : start + self.crop_samples]
        return torch.from_numpy(np.ascontiguousarray(wave)), int(self.labels[index]), index


def collate_padded(items: Sequence[tuple[torch.Tensor, int, int]], multiple: int = 1) -> Batch:
    """Zero-pad waves to the longest of the batch rounded up to a multiple of ``multiple`` samples:
    [(L_i,)] → waves (B, ⌈max L_i / multiple⌉ · multiple), lengths (B,)."""
    lengths = torch.tensor([len(wave) for wave, _, _ in items], dtype=torch.long)
    width = -(-int(lengths.max()) // multiple) * multiple
    waves = torch.zeros(len(items), width, dtype=torch.float32)
    for row, (wave, _, _) in enumerate(items):
        waves[row, : len(wave)] = wave
    labels = torch.tensor([label for _, label, _ in items], dtype=torch.long)
    indices = torch.tensor([index for _, _, index in items], dtype=torch.long)
    return Batch(waves, lengths, labels, indices)


PAD_SECONDS = 0.25
"""Training and evaluation batches are padded to a multiple of this many seconds
(`collate_to_shapes`), so that a split's batches take a few shapes only (3 s training crops: at
most 12) instead of one per batch. The C heap then serves each step's activations from blocks the
steps before freed; with a new length every step, glibc's heap (whose threshold for returning large
blocks to the system rises with each freed one) fragmented until a RAVDESS fold held 2.1–2.5 GB
(docs/RESULTS.md §10). The price is the padding: on average under half of this per batch. The
model is padding-invariant in eval mode; in training BatchNorm's batch statistics count the
padded frames too."""


def collate_to_shapes(sample_rate: int) -> functools.partial[Batch]:
    """`collate_padded` padding to multiples of `PAD_SECONDS` at ``sample_rate`` (a DataLoader's collate_fn)."""
    return functools.partial(collate_padded, multiple=max(1, round(PAD_SECONDS * sample_rate)))


def collate_for(
    hf_backbone: bool, sample_rate: int
) -> Callable[[Sequence[tuple[torch.Tensor, int, int]]], Batch]:
    """The collate_fn of a model's wave batches: `collate_to_shapes` for the log-mel front end (exactly
    padding-invariant in eval mode), `collate_padded` to the batch's longest wave for a Hugging Face
    backbone, whose convolutional feature encoder sees the padding (WavLM base's GroupNorm normalises
    over all frames), so that its states stay those of the batches it was built and cached with."""
    return collate_padded if hf_backbone else collate_to_shapes(sample_rate)


class LengthBucketSampler(torch.utils.data.Sampler[list[int]]):
    """Batches of utterances of similar length, reshuffled every epoch, sharded across DDP ranks.

    Each epoch (rng seeded by (seed, epoch)):
    1. permute all N indices; pad the permutation with its first items to a multiple of
       `world_size` (as `DistributedSampler` does: at most world_size − 1 repeats, none when
       N is a multiple);
    2. cut it into pools of `pool_batches` global batches (a global batch holds
       batch_size · world_size indices), sort each pool by length and cut it into global batches;
    3. shuffle the order of the global batches;
    4. rank r takes the r-th contiguous slice of every global batch, so all ranks run the same
       number of steps on batches of similar length.
    `state_dict()` holds (epoch, position): the number of batches of the epoch already yielded,
    so a run resumed from it continues with the same batches in the same order.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        pool_batches: int = 50,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        if pool_batches < 1:
            raise ValueError(f"pool_batches must be at least 1, got {pool_batches}")
        if len(lengths) == 0:
            raise DataSplitError("cannot sample batches from an empty split")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.pool_batches = pool_batches
        self.epoch = 0
        self.position = 0

    def global_batches(self, epoch: int) -> list[np.ndarray]:
        """All global batches of one epoch, in the order they are served (the same on every rank)."""
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.lengths))
        pad = -len(order) % self.world_size
        order = np.concatenate([order, np.resize(order, pad)])
        global_size = self.batch_size * self.world_size
        pool_size = global_size * self.pool_batches
        batches = []
        for start in range(0, len(order), pool_size):
            pool = order[start : start + pool_size]
            pool = pool[np.argsort(self.lengths[pool], kind="stable")]
            batches.extend(pool[i : i + global_size] for i in range(0, len(pool), global_size))
        return [batches[i] for i in rng.permutation(len(batches))]

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """This rank's batches of one epoch."""
        out = []
        for global_batch in self.global_batches(epoch):
            per_rank = len(global_batch) // self.world_size
            out.append(global_batch[self.rank * per_rank : (self.rank + 1) * per_rank].tolist())
        return out

    def set_epoch(self, epoch: int) -> None:
        """Start `epoch` from its first batch (a no-op when resuming inside that same epoch)."""
        if epoch != self.epoch:
            self.epoch = epoch
            self.position = 0

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.epoch_batches(self.epoch)
        while self.position < len(batches):
            batch = batches[self.position]
            self.position += 1
            yield batch

    def __len__(self) -> int:
        padded = math.ceil(len(self.lengths) / self.world_size) * self.world_size
        global_size = self.batch_size * self.world_size
        full_pools, rest = divmod(padded, global_size * self.pool_batches)
        return full_pools * self.pool_batches + math.ceil(rest / global_size)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if int(state["seed"]) != self.seed:
            raise ValueError(
                f"sampler state was saved with seed {state['seed']}, this sampler uses seed {self.seed}"
            )
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])


def shard_for_eval(
    lengths: Sequence[int], batch_size: int, *, rank: int = 0, world_size: int = 1
) -> list[list[int]]:
    """Evaluation batches of one rank: indices rank, rank + W, ... sorted by length, cut in batches.

    Ranks hold disjoint shards whose union is every index exactly once (no padding), so the
    gathered predictions count each utterance once.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    mine = np.arange(rank, len(lengths), world_size)
    mine = mine[np.argsort(-lengths[mine], kind="stable")]
    return [mine[i : i + batch_size].tolist() for i in range(0, len(mine), batch_size)]
