"""Synthetic corpora and tiny configs for the training tests: class-dependent tones, speakers, a fold table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import soundfile

from ser_model.config import LossConfig, ModelConfig, SERConfig, TrainConfig
from ser_model.launch import FoldJob

LABELS = ("low", "mid", "high")
FREQS = {"low": 220.0, "mid": 660.0, "high": 1760.0}


def write_synthetic_corpus(
    root: Path,
    n_speakers: int = 4,
    per_class: int = 2,
    seconds: tuple[float, float] = (0.4, 0.9),
    sample_rate: int = 16000,
    seed: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Write `n_speakers × len(LABELS) × per_class` noisy tones as WAV under `root`; return the
    manifest (the columns of docs/ARCHITECTURE.md) and a fold table where fold k tests speaker k,
    validates on speaker k+1 and trains on the others."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(n_speakers):
        speaker = f"S{s:02d}"
        for label in LABELS:
            for r in range(per_class):
                duration = float(rng.uniform(*seconds))
                t = np.arange(int(duration * sample_rate)) / sample_rate
                wave = 0.3 * np.sin(
                    2 * np.pi * FREQS[label] * (1 + 0.05 * s) * t
                ) + 0.02 * rng.standard_normal(len(t))
                rel = f"{speaker}/{label}_{r}.wav"
                (root / speaker).mkdir(parents=True, exist_ok=True)
                soundfile.write(root / rel, wave.astype(np.float32), sample_rate)
                rows.append(
                    dict(
                        utt_id=f"{speaker}_{label}_{r}",
                        corpus="ravdess",
                        path=rel,
                        speaker=speaker,
                        session=speaker,
                        gender="F" if s % 2 else "M",
                        label=label,
                        label_raw=label,
                        duration_s=len(t) / sample_rate,
                        sample_rate=sample_rate,
                        channels=1,
                        sha256=f"{s}{label}{r}",
                        fold=s,
                    )
                )
    manifest = pd.DataFrame(rows)
    folds = []
    for k in range(n_speakers):
        for s in range(n_speakers):
            role = "test" if s == k else "valid" if s == (k + 1) % n_speakers else "train"
            folds.append(dict(fold=k, speaker=f"S{s:02d}", role=role))
    return manifest, pd.DataFrame(folds)


def tiny_config(**train: object) -> SERConfig:
    """A small fbank model that trains in seconds on two CPU cores."""
    model = ModelConfig(
        backbone="fbank",
        n_mels=40,
        fbank_channels=(4, 8, 8, 8),
        fbank_dim=32,
        fbank_layers=1,
        fbank_heads=2,
        fbank_ff_mult=2,
        embed_dim=16,
        spec_time_width=5,
        spec_freq_width=5,
    )
    settings = dict(epochs=2, batch_size=4, eval_batch_size=8, lr=3e-3, max_seconds=1.0, seed=0)
    settings.update(train)
    return SERConfig(
        labels=LABELS,
        model=model,
        loss=LossConfig(supcon_proj_dim=16),
        train=TrainConfig(**settings),
        corpus="ravdess",
    )


def expected_selected_epoch(history: list[dict], metric: str = "UA") -> int:
    """Reference for checkpoint selection: the first validated epoch with the highest validation
    ``metric`` in a run's metrics.jsonl records (a later epoch must beat it, not tie it)."""
    validated = [(record["valid"][metric], -record["epoch"]) for record in history if "valid" in record]
    return -max(validated)[1]


def write_fold_job(
    folder: Path,
    manifest: pd.DataFrame,
    folds: pd.DataFrame,
    config: SERConfig,
    fold: int,
    audio_root: Path | str,
    out: Path,
) -> FoldJob:
    """Write a worker's input files (config, manifest, fold table) into ``folder``; the job that
    names them (its ``worker_args()`` are the worker's command line)."""
    folder.mkdir(parents=True, exist_ok=True)
    config.to_json(folder / "config.json")
    manifest.to_parquet(folder / "manifest.parquet")
    folds.to_parquet(folder / "folds.parquet")
    return FoldJob(
        corpus=config.corpus or "ravdess",
        fold=fold,
        config_path=folder / "config.json",
        manifest_path=folder / "manifest.parquet",
        folds_path=folder / "folds.parquet",
        audio_root=str(audio_root),
        out_dir=out,
        epochs=config.train.epochs,
    )
