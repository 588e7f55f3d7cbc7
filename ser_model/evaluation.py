"""Scoring a model on a split: predict every utterance once, whole (up to `EVAL_MAX_SECONDS`), and
compute the classification metrics (`ser_model.metrics.classification_metrics`).

`evaluate_split` is what a fit validates and tests with: the utterances (waveforms or a frozen
backbone's cached states) are sharded across the torchrun ranks and the predictions gathered.
`evaluate_rows` scores a trained model on manifest rows in this process (`ser evaluate`, the monitor),
from `rows_logits` (the monitor also reads its calibrated confidence from them).
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from typing import Any

import numpy as np
import pandas as pd
import torch

from ser_model.data import EVAL_MAX_SECONDS, UtteranceDataset, collate_for, shard_for_eval
from ser_model.fbank_backbone import LogMelStatistics
from ser_model.feature_cache import CachedStates, collate_states, forward_batch
from ser_model.metrics import classification_metrics
from ser_model.model import SERModel
from ser_model.runtime import Runtime, autocast, autocast_dtype, gather_from_ranks, resolve_device
from ser_model.speaker_norm import split_statistics

__all__ = ["evaluate_split", "split_logits", "evaluate_rows", "rows_logits", "whole_utterances"]


def evaluate_split(
    model: SERModel,
    dataset: UtteranceDataset | CachedStates,
    batch_size: int,
    runtime: Runtime,
    row_stats: LogMelStatistics | None = None,
) -> dict[str, Any]:
    """Predict every utterance of `dataset` (waveforms or cached states; sharded across ranks, gathered) → `classification_metrics`.
    ``row_stats``: a speaker-normalised model's speaker statistics of every row (N, n_mels)."""
    logits = split_logits(model, dataset, batch_size, runtime, row_stats)
    return classification_metrics(dataset.labels, logits.argmax(axis=1), len(model.labels), model.labels)


@torch.no_grad()
def split_logits(
    model: SERModel,
    dataset: UtteranceDataset | CachedStates,
    batch_size: int,
    runtime: Runtime,
    row_stats: LogMelStatistics | None = None,
) -> np.ndarray:
    """The logits (N, C) of every utterance of `dataset` in row order, float32: sharded across ranks,
    gathered on every rank (`evaluate_split`, the calibration of a fold). On a CPU in fp32 whatever
    the training's precision, so that a fit records the scores `ser evaluate`, the Predictor and the
    ONNX graph give its model; on CUDA in the runtime's autocast."""
    model.eval()
    batches = shard_for_eval(dataset.lengths, batch_size, rank=runtime.rank, world_size=runtime.world_size)
    collate = (
        collate_states
        if isinstance(dataset, CachedStates)
        else collate_for(model.config.model.is_hf, dataset.sample_rate)
    )
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches, collate_fn=collate)
    indices, predictions = [], []
    precision = autocast(runtime) if runtime.device.type == "cuda" else nullcontext()
    for batch in loader:
        with precision:
            logits = forward_batch(model, batch, runtime.device, row_stats).logits  # (B, C)
        indices.append(batch.indices)
        predictions.append(logits.float().cpu())
    n_classes = len(model.labels)
    local = (
        torch.cat(indices).tolist() if indices else [],
        torch.cat(predictions).numpy() if predictions else np.zeros((0, n_classes), dtype=np.float32),
    )
    shards = gather_from_ranks(local, runtime)
    order = np.concatenate([np.asarray(s[0], dtype=np.int64) for s in shards])
    out = np.empty((len(dataset), n_classes), dtype=np.float32)
    out[order] = np.concatenate([np.asarray(s[1], dtype=np.float32).reshape(-1, n_classes) for s in shards])
    return out


def evaluate_rows(
    model: SERModel,
    rows: pd.DataFrame,
    audio_root: str | os.PathLike,
    *,
    batch_size: int = 16,
    device: str = "auto",
) -> dict[str, Any]:
    """Metrics of a trained model on manifest rows, in this process (`ser evaluate`; `rows_logits`)."""
    logits, labels = rows_logits(model, rows, audio_root, batch_size=batch_size, device=device)
    return classification_metrics(labels, logits.argmax(axis=1), len(model.labels), model.labels)


def rows_logits(
    model: SERModel,
    rows: pd.DataFrame,
    audio_root: str | os.PathLike,
    *,
    batch_size: int = 16,
    device: str = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """(logits (N, C), class indices (N,)) of a trained model on manifest rows, in row order, in this
    process. A speaker-normalised model gets each speaker's statistics from that speaker's rows here
    (the manifest's `speaker` column)."""
    dev = resolve_device(device)
    model = model.to(dev)
    mc = model.config.model
    dataset = whole_utterances(model, rows, audio_root)
    row_stats = (
        split_statistics(model.backbone, dataset.full_wave, row_speakers(rows), "evaluation", device=dev)
        if mc.uses_speaker_statistics
        else None
    )
    runtime = Runtime(0, 1, dev, autocast_dtype("auto", dev))
    return split_logits(model, dataset, batch_size, runtime, row_stats), np.asarray(dataset.labels)


def whole_utterances(
    model: SERModel, rows: pd.DataFrame, audio_root: str | os.PathLike, *, preload: bool | None = None
) -> UtteranceDataset:
    """The manifest ``rows`` as a model scores them: each utterance whole (up to ``EVAL_MAX_SECONDS``),
    at the model's sample rate, silence-trimmed by its config. ``preload``: as ``UtteranceDataset``'s
    (None: decoded up front when it fits the memory cache; False: item by item)."""
    mc = model.config.model
    return UtteranceDataset(
        rows,
        audio_root,
        model.labels,
        sample_rate=mc.sample_rate,
        crop_seconds=EVAL_MAX_SECONDS,
        random_crop=False,
        trim_db=mc.trim_db,
        preload=preload,
    )


def row_speakers(rows: pd.DataFrame) -> list[str]:
    """The speaker of every manifest row, in row order (the keys of its speaker statistics)."""
    return rows["speaker"].astype(str).tolist()
