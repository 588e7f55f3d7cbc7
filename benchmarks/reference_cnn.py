"""The plain reference model of the accuracy grid, written apart from ser_model on purpose.

A log-mel CNN with one self-attention layer and attentive pooling, trained with cross-entropy: the
"simple reference model beside the method" every accuracy grid must hold. It shares with the method
only the protocol: the same folds and splits (`ser_model.train.training_splits`), the same decoding and
random 3 s training crops (`ser_model.data.UtteranceDataset`), the same length-bucketed batches, the
same learning-rate schedule (below), the checkpoint selected on the fold's validation speakers by
UA, and the test speakers scored once.
Nothing of the method's model code (backbone, FLAM, head, losses, EAM) is used, so a bug there
cannot lift or sink the reference too.

    80-bin log-mel (25 ms / 10 ms), per-bin mean subtracted over the utterance's frames
    → 4 × [Conv2d 3×3, BatchNorm2d, ReLU, MaxPool 2×2] with 32-64-128-128 channels over (mel × time)
    → frames (B, T/16, 128·5) → Linear → 128 → one multi-head self-attention layer (4 heads, residual)
    → attentive pooling (learned query) → Linear 64 → ReLU → Linear C
    cross-entropy, Adam lr 1e-3, batch 16, 25 epochs, random 3 s crops, no trimming, no augmentation;
    the learning rate follows the method's schedule (`ser_model.optimisation.lr_factor` with the `cpu-fbank`
    preset's `warmup_epochs` and `schedule`: one epoch of linear warm-up, then a cosine to zero).

Why the schedule is shared: it is part of the training protocol, not of the method. At a constant
1e-3 (this module until 2026-11-29, results kept in benchmarks/results/reference_constant_lr) the
reference's validation UA swung by up to 0.3 from one epoch to the next and its training loss was
still 1.47 after 25 epochs. A probe on fold 0 (seed 0, judged on its validation actors only, never
its test actors) with the warm-up and cosine: training loss 0.54 by epoch 19, validation UA 0.54
there, against a best of 0.47 (epoch 11) and 0.31 at epoch 25 at the constant rate. Changing the
input instead (silence trimmed at 40 dB, or per-bin variance normalised too) did not help in 8
epochs. A reference handicapped by its optimiser would flatter the method.

Evaluation feeds one utterance at a time (batch of one, no padding), so no masking is needed there;
training batches of 3 s crops are padded to the longest and the padded frames are masked in the
attention and the pooling.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torchaudio
from torch import nn

from ser_model.data import EVAL_MAX_SECONDS, LengthBucketSampler, UtteranceDataset, collate_padded
from ser_model.launch import METRICS_FILE, RESULT_FILE
from ser_model.metrics import HEADLINE_METRICS, classification_metrics, selection_rule
from ser_model.optimisation import lr_factor
from ser_model.presets import DEFAULT_PRESET, experiment_config
from ser_model.train import training_splits

RECIPE: dict[str, Any] = {
    "epochs": 25,
    "batch_size": 16,
    "lr": 1e-3,
    "crop_seconds": 3.0,
    "channels": [32, 64, 128, 128],
    "dim": 128,
    "heads": 4,
    "schedule": "the cpu-fbank preset's (warm-up, then cosine)",
}
PROTOCOL_PRESET = DEFAULT_PRESET
"""The preset whose learning-rate schedule (``train.warmup_epochs``, ``train.schedule``) the reference shares."""
SELECT_METRIC = "UA"
"""The validation metric that selects the reference's checkpoint, as the method's default (`TrainConfig.select_metric`)."""


class ReferenceCNN(nn.Module):
    """waves (B, L), lengths (B,) → logits (B, C); the architecture of the module docstring."""

    def __init__(
        self,
        n_classes: int,
        channels: tuple[int, ...] = (32, 64, 128, 128),
        dim: int = 128,
        heads: int = 4,
        n_mels: int = 80,
    ):
        super().__init__()
        self.mel = torchaudio.transforms.MelSpectrogram(
            16000, n_fft=400, win_length=400, hop_length=160, n_mels=n_mels, center=False
        )
        layers: list[nn.Module] = []
        c_in = 1
        for c_out in channels:
            layers += [
                nn.Conv2d(c_in, c_out, 3, padding=1),
                nn.BatchNorm2d(c_out),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
            c_in = c_out
        self.cnn = nn.Sequential(*layers)
        self.project = nn.Linear(channels[-1] * (n_mels // 2 ** len(channels)), dim)
        self.attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.query = nn.Parameter(torch.randn(dim) / math.sqrt(dim))
        self.head = nn.Sequential(nn.Linear(dim, 64), nn.ReLU(), nn.Linear(64, n_classes))

    def forward(self, waves: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        frames = torch.div(lengths - 400, 160, rounding_mode="floor").clamp_min(0) + 1  # (B,) log-mel frames
        x = torch.log(self.mel(waves) + 1e-6)  # (B, M, T)
        valid = (torch.arange(x.shape[2])[None, :] < frames[:, None]).to(x.dtype)  # (B, T)
        mean = (x * valid[:, None]).sum(2, keepdim=True) / frames[:, None, None]
        x = (x - mean) * valid[:, None]
        h = self.cnn(x[:, None])  # (B, C, M/16, T/16)
        h = self.project(h.flatten(1, 2).transpose(1, 2))  # (B, T', dim)
        n = (frames // 16).clamp(1, h.shape[1])
        pad = torch.arange(h.shape[1])[None, :] >= n[:, None]  # (B, T') True at padding
        a, _ = self.attention(h, h, h, key_padding_mask=pad, need_weights=False)
        h = self.norm(h + a)
        scores = (h @ self.query).masked_fill(pad, float("-inf"))  # (B, T')
        pooled = torch.einsum("bt,btd->bd", torch.softmax(scores, dim=1), h)
        return self.head(pooled)


@torch.no_grad()
def _evaluate(model: ReferenceCNN, dataset: UtteranceDataset, labels: tuple[str, ...]) -> dict[str, Any]:
    model.eval()
    predictions = []
    for i in range(len(dataset)):
        wave, _, _ = dataset[i]
        wave = torch.nn.functional.pad(wave, (0, max(0, 400 - len(wave))))[None]  # at least one frame
        predictions.append(int(model(wave, torch.tensor([wave.shape[1]])).argmax()))
    return classification_metrics(dataset.labels, np.asarray(predictions), len(labels), labels)


def train_reference(
    manifest: pd.DataFrame,
    folds: pd.DataFrame,
    fold: int,
    audio_root: str | Path,
    out_dir: str | Path,
    labels: tuple[str, ...],
    seed: int = 0,
) -> dict[str, Any]:
    """Train the reference on one fold; write result.json and metrics.jsonl (benchmarks/accuracy.py's format)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    splits = training_splits(manifest, folds, fold)
    speakers = {name: sorted(rows["speaker"].astype(str).unique()) for name, rows in splits.items()}
    train_set = UtteranceDataset(
        splits["train"],
        audio_root,
        labels,
        sample_rate=16000,
        crop_seconds=RECIPE["crop_seconds"],
        random_crop=True,
        seed=seed,
    )
    valid_set, test_set = (
        UtteranceDataset(
            splits[name],
            audio_root,
            labels,
            sample_rate=16000,
            crop_seconds=EVAL_MAX_SECONDS,
            random_crop=False,
        )
        for name in ("valid", "test")
    )
    sampler = LengthBucketSampler(train_set.lengths, RECIPE["batch_size"], seed=seed)
    loader = torch.utils.data.DataLoader(train_set, batch_sampler=sampler, collate_fn=collate_padded)
    model = ReferenceCNN(len(labels), tuple(RECIPE["channels"]), RECIPE["dim"], RECIPE["heads"])
    optimizer = torch.optim.Adam(model.parameters(), lr=RECIPE["lr"])
    schedule = experiment_config(
        "ravdess", PROTOCOL_PRESET, overrides={"train.epochs": RECIPE["epochs"]}
    ).train
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, len(sampler), schedule)
    )
    best_score, best_epoch, best_state, history = -1.0, 0, None, []
    for epoch in range(RECIPE["epochs"]):
        started = time.perf_counter()
        model.train()
        train_set.set_epoch(epoch)
        sampler.set_epoch(epoch)
        losses = []
        for batch in loader:
            loss = nn.functional.cross_entropy(model(batch.waves, batch.lengths), batch.labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
        valid = _evaluate(model, valid_set, labels)
        if valid[SELECT_METRIC] > best_score:
            best_score, best_epoch = valid[SELECT_METRIC], epoch + 1
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
        record = {
            "epoch": epoch + 1,
            "train": {"loss": float(np.mean(losses))},
            "lr": optimizer.param_groups[0]["lr"],
            "valid": {k: valid[k] for k in HEADLINE_METRICS},
        }
        record["seconds"] = time.perf_counter() - started
        history.append(record)
        (out_dir / METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in history))
    model.load_state_dict(best_state)
    result = {
        "fold": fold,
        "selected_epoch": best_epoch,
        "select_metric": SELECT_METRIC,
        "selection_rule": selection_rule(SELECT_METRIC, speakers),
        "speakers": speakers,
        "valid": _evaluate(model, valid_set, labels),
        "test": _evaluate(model, test_set, labels),
        "epochs": RECIPE["epochs"],
        "recipe": RECIPE,
    }
    (out_dir / RESULT_FILE).write_text(json.dumps(result, indent=2) + "\n")
    return result
