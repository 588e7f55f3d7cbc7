"""Cached hidden states of a frozen hf backbone: computed once per utterance, read by every epoch and fold.

With ``model.backbone_mode`` "frozen" or "weighted_sum" the backbone never changes in training, so
its hidden states of an utterance are the same in every epoch, every fold and every run with the
same backbone: ``fit`` computes them once, stores them here, and then trains and evaluates only
the layers above the backbone (``SERModel.forward_cached``). This is the SUPERB / EmoBox protocol
for comparing SSL backbones, and what makes a frozen WavLM-Large run take minutes instead of hours.

Key. A cache folder ``<root>/<digest>/`` holds the states of one key (``key.json``, in full):

* backbone: sha256 of its transformers config (sorted JSON) and of its weights (every tensor,
  by name), so other weights or another architecture never read these states; the source
  (hub id or folder) is written beside the key for the reader but is not part of it: the same
  weights copied to another folder give the same states;
* layers: ``HFBackbone.layer_set``: every hidden state for the layer weights ("weighted_sum"),
  the last alone for "frozen";
* view: what the backbone is shown of an utterance: the silence trimming (``ModelConfig.trim_db``),
  waveform normalisation, sample rate, and the whole utterance centre-cropped to
  ``EVAL_MAX_SECONDS`` (the inference policy, ``ser_model.data``), computed alone (batch of one,
  so an entry never depends on the padding of a batch);
* precision: the autocast dtype the states were computed under;
* the format version of this module.

Entries. One file per utterance content, ``entries/<sha256>.safetensors``, named by the
manifest's ``sha256`` of the audio file (hashed and checked at ingest): another manifest of the
same files reuses the entries, a changed file gets a new one. ``index.json`` lists every entry
with its shape and the sha256 of its file; opening reads each entry a run needs and compares
both, and an entry that is missing, unreadable or does not match is logged as a warning and
recomputed. The index is updated under a file lock, entries are written atomically, so folds
training at once share one cache (the files and these rules: ``ser_model.feature_cache_folder``).

Crop policy. A training crop of ``TrainConfig.max_seconds`` is a window of the cached
whole-utterance frames (``random_crop_start``), not the frames of a cropped waveform: those differ
near the crop's edges (the CNN's receptive field and the transformer's global attention see
outside the window). Cropping frames keeps the cache exact: the cached path gives the logits
that the live backbone gives on the whole utterance, cropped the same way (tested). Evaluation
always reads the cache. Training batches read it when EAM is off; EAM mixes waveforms, so with
EAM on the training batches run the backbone live on mixed waveform crops.

Beyond one machine: ``fit`` reads and fills a local folder (``feature_cache_dir``; default
``<out_dir>/../feature-cache``, shared by the folds of a run). The train flow gives its workers
one folder per machine (``--feature-cache``: ``SER_FEATURE_CACHE_DIR``, default
``<state>/feature-cache``), fills it from ``s3://<data bucket>/feature-cache/`` before a fold's
worker starts and uploads what the worker added after it succeeds (flows/feature_store.py), so
folds on other machines, and later runs, reuse the entries instead of computing them again.
Downloaded entries are checked against the index's sha256 there; the worker checks every entry it
reads again when it opens the cache.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from tqdm.auto import tqdm

from ser_model.backbone_facts import FROZEN_MODES, HF_SAMPLE_RATE
from ser_model.config import uses_feature_cache
from ser_model.data import EVAL_MAX_SECONDS, Batch, UtteranceDataset, memory_cache_bytes, random_crop_start
from ser_model.fbank_backbone import LogMelStatistics
from ser_model.feature_cache_folder import (
    ENTRIES_DIR,
    KEY_FILE,
    IndexEntry,
    entry_path,
    key_digest,
    merge_index,
    read_index,
    sha256_json,
    write_key_file,
)
from ser_model.hf_backbone import HFBackbone
from ser_model.model import SERModel, SEROutput
from ser_stack.files import write_atomically

__all__ = [
    "cache_key",
    "FeatureCache",
    "CachedStates",
    "StatesBatch",
    "collate_states",
    "uses_feature_cache",
    "forward_batch",
]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
STATES_TENSOR = "states"


def weights_sha256(module: torch.nn.Module) -> str:
    """sha256 over (name, dtype, shape, bytes) of every tensor of ``module.state_dict()``, in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def cache_key(
    backbone: dict[str, Any],
    layers: Sequence[int],
    *,
    trim_db: float | None,
    wave_norm: bool,
    amp_dtype: torch.dtype | None = None,
) -> dict[str, Any]:
    """The key of a key folder (module docstring): ``backbone`` (its model type and the sha256 of its
    config and weights), the hidden ``layers`` kept, the view of the audio (16 kHz, ``trim_db``,
    whole utterances up to ``EVAL_MAX_SECONDS``, ``wave_norm``) and the precision (``amp_dtype``;
    None: float32)."""
    return {
        "format": FORMAT_VERSION,
        "backbone": dict(backbone),
        "layers": list(layers),
        "view": {
            "sample_rate": HF_SAMPLE_RATE,
            "trim_db": trim_db,
            "max_seconds": EVAL_MAX_SECONDS,
            "wave_norm": wave_norm,
            "computed": "one utterance at a time",
        },
        "precision": str(amp_dtype).replace("torch.", "") if amp_dtype is not None else "float32",
    }


class StatesBatch(NamedTuple):
    """A padded batch of cached states: states (B, K', T, D) zero-padded, mask (B, T) valid frames, labels (B,), indices (B,)."""

    states: torch.Tensor
    mask: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor


def collate_states(items: Sequence[tuple[torch.Tensor, int, int]]) -> StatesBatch:
    """Zero-pad cached states to the longest of the batch: [(K', T_i, D)] → states (B, K', max T_i, D), mask (B, max T_i)."""
    n_frames = torch.tensor([states.shape[1] for states, _, _ in items], dtype=torch.long)
    k, _, d = items[0][0].shape
    states = torch.zeros(len(items), k, int(n_frames.max()), d, dtype=items[0][0].dtype)
    for row, (item, _, _) in enumerate(items):
        states[row, :, : item.shape[1]] = item
    mask = torch.arange(int(n_frames.max()))[None, :] < n_frames[:, None]
    labels = torch.tensor([label for _, label, _ in items], dtype=torch.long)
    indices = torch.tensor([index for _, _, index in items], dtype=torch.long)
    return StatesBatch(states, mask, labels, indices)


def forward_batch(
    model: SERModel,
    batch: Batch | StatesBatch,
    device: torch.device,
    row_stats: LogMelStatistics | None = None,
) -> SEROutput:
    """The model on a waveform ``Batch`` (live backbone) or a ``StatesBatch`` (cached states).
    ``row_stats``: a speaker-normalised model's statistics of every row of the split (N, n_mels),
    of which the batch's rows are given to the model (``ser_model.speaker_norm``)."""
    if isinstance(batch, StatesBatch):
        return model.forward_cached(batch.states.to(device), batch.mask.to(device))
    stats = None if row_stats is None else row_stats.rows(batch.indices).to(device)
    return model(batch.waves.to(device), batch.lengths.to(device), stats)


class CachedStates(torch.utils.data.Dataset):
    """Manifest rows → (cached states (K', T, D), label, row index); a drop-in for ``UtteranceDataset``
    in ``fit`` (``lengths``, ``labels``, ``set_epoch``), batched by ``collate_states``.

    ``crop_frames``: training windows of that many frames at ``random_crop_start`` (None: whole
    utterances, as evaluation sees them). ``lengths`` are the frames served, for bucketing and sharding.
    """

    def __init__(
        self,
        cache: FeatureCache,
        sha256s: Sequence[str],
        labels: np.ndarray,
        crop_frames: int | None,
        seed: int,
    ) -> None:
        self.cache = cache
        self.sha256s = list(sha256s)
        self.labels = labels
        self.crop_frames = crop_frames
        self.seed = seed
        self.epoch = 0
        full = np.array([cache.n_frames(sha) for sha in self.sha256s], dtype=np.int64)
        self.lengths = full if crop_frames is None else np.minimum(full, crop_frames)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.sha256s)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        states = self.cache.states(self.sha256s[index])  # (K', T, D)
        start = random_crop_start(states.shape[1], self.crop_frames, self.seed, self.epoch, index)
        if self.crop_frames is not None:
            states = states[:, start : start + self.crop_frames]
        return states, int(self.labels[index]), index


class FeatureCache:
    """The hidden states of one frozen ``HFBackbone`` under one view (module docstring), in ``root/<digest>/``.

    ``device`` and ``amp_dtype``: where and under which autocast dtype missing entries are computed
    (the dtype is part of the key). ``dataset(rows, ...)`` computes what is missing and returns
    the rows' ``CachedStates``; entries are kept in memory while they fit in ``memory_cache_bytes()``.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        backbone: HFBackbone,
        *,
        trim_db: float | None,
        device: torch.device | str = "cpu",
        amp_dtype: torch.dtype | None = None,
    ) -> None:
        if backbone.mode not in FROZEN_MODES:
            raise ValueError(
                f"FeatureCache: the backbone is in mode {backbone.mode!r}, so its states change in training; "
                f"expected one of {FROZEN_MODES}"
            )
        self.backbone = backbone
        self.trim_db = trim_db
        self.device = torch.device(device)
        self.amp_dtype = amp_dtype
        config = backbone.model.config.to_dict()
        self.key = cache_key(
            {
                "model_type": config.get("model_type"),
                "config_sha256": sha256_json(config),
                "weights_sha256": weights_sha256(backbone.model),
            },
            backbone.layer_set,
            trim_db=trim_db,
            wave_norm=backbone.wave_norm,
            amp_dtype=amp_dtype,
        )
        self.folder = Path(root) / key_digest(self.key)
        (self.folder / ENTRIES_DIR).mkdir(parents=True, exist_ok=True)
        key_path = self.folder / KEY_FILE
        if not key_path.is_file():
            write_key_file(self.folder, self.key, getattr(backbone.model.config, "_name_or_path", ""))
        self._memory: dict[str, torch.Tensor] = {}
        self._entries: dict[str, IndexEntry] = {}
        self._memory_bytes = 0
        self._memory_limit = memory_cache_bytes()

    # ------------------------------------------------------------------ reading

    def n_frames(self, sha256: str) -> int:
        return self._entries[sha256].shape[1]

    def states(self, sha256: str) -> torch.Tensor:
        """The cached states (K', T, D) of an utterance checked by ``dataset``."""
        cached = self._memory.get(sha256)
        return cached if cached is not None else self._read(sha256, self._entries[sha256])

    def _read(self, sha256: str, entry: IndexEntry) -> torch.Tensor:
        """Read and check one entry; raise ValueError saying what does not match."""
        path = entry_path(self.folder, sha256)
        data = path.read_bytes()
        checksum = hashlib.sha256(data).hexdigest()
        if checksum != entry.checksum:
            raise ValueError(f"{path}: file sha256 {checksum[:12]}…, the index says {entry.checksum[:12]}…")
        states = load_safetensors(data)[STATES_TENSOR]
        if tuple(states.shape) != entry.shape:
            raise ValueError(f"{path}: states of shape {tuple(states.shape)}, the index says {entry.shape}")
        return states

    def _keep(self, sha256: str, entry: IndexEntry, states: torch.Tensor) -> None:
        self._entries[sha256] = entry
        size = states.numel() * states.element_size()
        if self._memory_bytes + size <= self._memory_limit:
            self._memory[sha256] = states
            self._memory_bytes += size

    # ------------------------------------------------------------------ filling

    def dataset(
        self,
        rows: pd.DataFrame,
        audio_root: str | os.PathLike,
        label_names: Sequence[str],
        *,
        crop_seconds: float | None = None,
        seed: int = 0,
    ) -> CachedStates:
        """The rows' ``CachedStates`` after computing every entry that is missing or fails its check.

        ``crop_seconds``: training windows of that length, in frames (``random_crop_start``); None:
        whole utterances (evaluation). Under torch.distributed every rank computes its share of the
        missing entries and reads the others' after a barrier.
        """
        view = UtteranceDataset(
            rows,
            audio_root,
            label_names,
            sample_rate=HF_SAMPLE_RATE,
            crop_seconds=EVAL_MAX_SECONDS,
            random_crop=False,
            trim_db=self.trim_db,
            preload=False,
        )
        sha256s = rows["sha256"].astype(str).tolist()
        first_row = {sha: i for i, sha in reversed(list(enumerate(sha256s)))}
        index = read_index(self.folder)
        missing = []
        for sha in first_row:
            if sha in self._entries:
                continue
            entry = index.get(sha)
            if entry is None:
                missing.append(sha)
                continue
            try:
                self._keep(sha, entry, self._read(sha, entry))
            except (OSError, ValueError, KeyError, SafetensorError) as err:
                log.warning(
                    "feature cache %s: entry of utterance %s is corrupt (%s); recomputing it",
                    self.folder,
                    view.utt_ids[first_row[sha]],
                    err,
                )
                missing.append(sha)
        rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        mine = missing[rank::world]
        started = time.perf_counter()
        computed = self._compute([(sha, first_row[sha]) for sha in mine], view)
        merge_index(self.folder, self.key, computed)
        if world > 1:
            dist.barrier()
            index = read_index(self.folder)
            for sha in missing:
                if sha not in self._entries:
                    self._keep(sha, index[sha], self._read(sha, index[sha]))
        log.info(
            "feature cache %s: %d utterances, %d read from the cache, %d computed (%.1f s)",
            self.folder,
            len(first_row),
            len(first_row) - len(missing),
            len(missing),
            time.perf_counter() - started,
        )
        crop_frames = None
        if crop_seconds is not None:
            crop_samples = max(1, int(round(crop_seconds * HF_SAMPLE_RATE)))
            crop_frames = int(self.backbone.frame_lengths(torch.tensor([crop_samples]))[0])
        return CachedStates(self, sha256s, view.labels, crop_frames, seed)

    @torch.no_grad()
    def _compute(self, todo: list[tuple[str, int]], view: UtteranceDataset) -> dict[str, IndexEntry]:
        """Compute, write and keep the entries of ``todo`` [(sha256, row of view)], one utterance at a time."""
        records = {}
        was_training = self.backbone.training
        self.backbone.eval()
        autocast = torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)
        for sha, row in tqdm(
            todo, desc="feature cache", unit="utt", leave=False, disable=None if todo else True
        ):
            wave, _, _ = view[row]
            with autocast:
                states, _ = self.backbone.hidden_states(
                    wave[None].to(self.device), torch.tensor([len(wave)], device=self.device)
                )
            states = states[0].float().cpu().contiguous()  # (K', T, D)
            data = save_safetensors({STATES_TENSOR: states})
            entry = IndexEntry(tuple(states.shape), hashlib.sha256(data).hexdigest())
            write_atomically(entry_path(self.folder, sha), data)
            records[sha] = entry
            self._keep(sha, entry, states)
        self.backbone.train(was_training)
        return records
