"""The model side of `benchmarks/run.py`: inference and training-step ratios on CPU, real-time factors.

Imported by run.py only after the ingest benchmarks, so that torch's threads and memory do not
weigh on them. See run.py for what each ratio means.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import soundfile as sf
import torch
import torch.nn.functional as F

from benchmarks.common import (
    BenchSettings,
    PeakRSS,
    Side,
    count_flops,
    cpu_time_ratio,
    interleaved_medians,
    ratio_entry,
    traced_peak_mb,
)
from data_contracts.corpora.base import Candidate
from ser_model.audio import load_audio
from ser_model.config import ModelConfig, SERConfig, TrainConfig
from ser_model.data import UtteranceDataset, collate_padded
from ser_model.eam import energy_adaptive_mixup
from ser_model.hf_backbone import tiny_wavlm_config
from ser_model.inference import Predictor
from ser_model.model import SERModel
from ser_model.optimisation import TrainingObjective

SAMPLE_RATE = 16000
TARGETS = {"inference": 1.10, "training": 1.15}


def small_wavlm_config() -> Any:
    """A small random WavLM with the default 7-layer conv stack (stride 320, 50 frames/s) at 256
    channels, 4 transformer layers of width 256 (4 heads, feed-forward 1024), pre-LN like WavLM-Large."""
    return tiny_wavlm_config(
        hidden_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=1024,
        conv_dim=(256,) * 7,
        conv_stride=(5, 2, 2, 2, 2, 2, 2),
        conv_kernel=(10, 3, 3, 3, 3, 2, 2),
        num_conv_pos_embeddings=128,
        num_conv_pos_embedding_groups=16,
        num_buckets=320,
        max_bucket_distance=800,
    )


def base_wavlm_config() -> Any:
    """A random WavLM of WavLM-Base's shape (94 M parameters): the default 7-layer conv stack at 512
    channels, 12 transformer layers of width 768 (12 heads, feed-forward 3072), pre-LN."""
    return tiny_wavlm_config(
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        conv_dim=(512,) * 7,
        conv_stride=(5, 2, 2, 2, 2, 2, 2),
        conv_kernel=(10, 3, 3, 3, 3, 2, 2),
        num_conv_pos_embeddings=128,
        num_conv_pos_embedding_groups=16,
        num_buckets=320,
        max_bucket_distance=800,
    )


HF_SHAPES: dict[str, Callable[[], Any]] = {
    "tiny": tiny_wavlm_config,
    "small": small_wavlm_config,
    "base": base_wavlm_config,
}


def bench_config(backbone: str, labels: tuple[str, ...], s: BenchSettings) -> SERConfig:
    """The full method (EAM, FLAM, all four losses) with `backbone`, training crop `crop_seconds`, fp32 on CPU."""
    return SERConfig(
        labels=labels,
        model=ModelConfig(backbone=backbone, backbone_mode="finetune"),
        train=TrainConfig(
            max_seconds=s.crop_seconds, batch_size=s.batch_size, device="cpu", precision="fp32"
        ),
    )


def build_models(labels: tuple[str, ...], s: BenchSettings) -> dict[str, SERModel]:
    """{"fbank": ..., "hf-<shape>": ...}, randomly initialised and built locally (no download)."""
    torch.manual_seed(0)
    return {
        "fbank": SERModel(bench_config("fbank", labels, s)),
        f"hf-{s.hf_shape}": SERModel(
            bench_config(f"hf:random-wavlm-{s.hf_shape}", labels, s), backbone_config=HF_SHAPES[s.hf_shape]()
        ),
    }


def padded(waves: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """[(N_i,)] → zero-padded (B, max N_i) float32 and lengths (B,) long."""
    lengths = torch.tensor([len(w) for w in waves], dtype=torch.long)
    batch = torch.zeros(len(waves), int(lengths.max()))
    for row, wave in enumerate(waves):
        batch[row, : len(wave)] = torch.from_numpy(wave)
    return batch, lengths


def bench_inference(name: str, model: SERModel, paths: list[Path], s: BenchSettings) -> dict[str, Any]:
    """Predictor.predict_files on `paths` (one batch, one window per file) vs a bare backbone
    forward on the same padded batch, and the Predictor's real-time factor."""
    waves = [load_audio(p, SAMPLE_RATE) for p in paths]
    batch, lengths = padded(waves)
    audio_s = float(lengths.sum()) / SAMPLE_RATE
    longest_s = float(lengths.max()) / SAMPLE_RATE
    predictor = Predictor(model, window_seconds=longest_s + 1.0, batch_size=len(paths))
    backbone = model.backbone.eval()

    @torch.no_grad()
    def bare() -> None:
        backbone(batch, lengths)

    with PeakRSS() as mem:
        timings = interleaved_medians(
            {"predictor": lambda: predictor.predict_files(paths), "backbone": bare},
            repeats=s.repeats,
            warmup=s.warmup,
        )
    full, bare_s = timings["predictor"]["median_s"], timings["backbone"]["median_s"]
    traced = traced_peak_mb(lambda: predictor.predict_files(paths))
    ratio = ratio_entry(
        f"inference overhead, {name}",
        Side("Predictor.predict_files (decode + resample + backbone + FLAM + head)", full, "s"),
        Side("bare backbone forward, same batch", bare_s, "s"),
        target=TARGETS["inference"],
        at_most=True,
        cpu_ratio=cpu_time_ratio(timings, "predictor", "backbone"),
        note=f"{len(paths)} files, {audio_s:.1f} s of audio, one batch",
    )
    return {
        "files": len(paths),
        "audio_s": audio_s,
        "timings": timings,
        "ratio": ratio,
        "rtf": {
            "backbone": name,
            "audio_s": audio_s,
            "processing_s": full,
            "rtf": full / audio_s,
            "rtf_bare_backbone": bare_s / audio_s,
        },
        "memory": {**mem.as_dict(), "tracemalloc_peak_mb": round(traced, 1)},
    }


def train_dataset(
    root: Path, candidates: list[Candidate], labels: tuple[str, ...], s: BenchSettings
) -> UtteranceDataset:
    """An in-memory UtteranceDataset over `candidates` (random crops of `crop_seconds`)."""
    rows = pd.DataFrame(
        {
            "utt_id": [c.utt_id for c in candidates],
            "path": [c.path for c in candidates],
            "label": [c.label for c in candidates],
            "duration_s": [sf.info(str(root / c.path)).duration for c in candidates],
        }
    )
    return UtteranceDataset(
        rows,
        root,
        labels,
        sample_rate=SAMPLE_RATE,
        crop_seconds=s.crop_seconds,
        random_crop=True,
        preload=True,
    )


def bench_training(name: str, model: SERModel, dataset: UtteranceDataset, s: BenchSettings) -> dict[str, Any]:
    """One training step as `ser_model.train.fit` runs it vs a bare backbone forward + backward on the same batch."""
    config = model.config
    model.train()
    indices = list(range(min(s.batch_size, len(dataset))))
    waves, lengths, labels, _ = collate_padded([dataset[i] for i in indices])
    targets = F.one_hot(labels, config.n_classes).float()
    eam_generator, loss_generator = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    objective = TrainingObjective(model, loss_generator)
    groups = [{"params": model.main_parameters(), "lr": config.train.lr}]
    if model.center_parameters():
        groups.append({"params": model.center_parameters(), "lr": config.train.center_lr})
    optimizer = torch.optim.Adam(groups)
    trainable = [p for p in model.parameters() if p.requires_grad]
    eam_seconds: list[float] = []

    def data() -> None:
        collate_padded([dataset[i] for i in indices])

    def step() -> None:
        start = time.perf_counter()
        mixed = energy_adaptive_mixup(waves, lengths, targets, generator=eam_generator, config=config.eam)
        eam_seconds.append(time.perf_counter() - start)
        total, _ = objective(mixed.waves, lengths, mixed.targets, labels)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(trainable, config.train.grad_clip)
        optimizer.step()

    def bare() -> None:
        model.zero_grad(set_to_none=True)
        frames, _ = model.backbone(waves, lengths)  # (B, T, D)
        frames.sum().backward()

    with PeakRSS() as mem:
        timings = interleaved_medians(
            {"step": step, "backbone": bare, "data": data}, repeats=s.repeats, warmup=s.warmup
        )
    step_s, bare_s, data_s = (timings[k]["median_s"] for k in ("step", "backbone", "data"))
    eam_s = float(np.median(eam_seconds[s.warmup :]))
    step_flops, bare_flops = count_flops(step), count_flops(bare)
    audio_s = float(lengths.sum()) / SAMPLE_RATE
    ratio = ratio_entry(
        f"training step, {name}",
        Side("EAM + forward + multi-loss + backward + clip + Adam", step_s, "s"),
        Side("bare backbone forward + backward, same batch", bare_s, "s"),
        target=TARGETS["training"],
        at_most=True,
        cpu_ratio=cpu_time_ratio(timings, "step", "backbone"),
        note=f"batch {len(indices)} x up to {s.crop_seconds:g} s ({audio_s:.1f} s of audio)",
    )
    return {
        "batch": len(indices),
        "audio_s": audio_s,
        "timings": timings,
        "ratio": ratio,
        "eam_s": eam_s,
        "eam_share_of_step": eam_s / step_s,
        "data_s": data_s,
        "data_share_of_iteration": data_s / (data_s + step_s),
        "utterances_per_s": len(indices) / step_s,
        "flops_per_step": step_flops,
        "flops_backbone_forward_backward": bare_flops,
        "flop_ratio": step_flops / bare_flops,
        "parameters_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "memory": mem.as_dict(),
    }


def torch_facts(threads: int) -> dict[str, Any]:
    """Set torch's thread count; return it with the torch version."""
    torch.set_num_threads(threads)
    return {"torch_threads": torch.get_num_threads(), "torch": torch.__version__}


def lifetime_memory() -> dict[str, Any]:
    """Process-lifetime maximum RSS of this process and of its largest waited-for child, and torch's CPU allocator stats if any."""
    stats = getattr(torch.cpu, "memory_stats", None)
    return {
        "max_rss_self_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "max_rss_children_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
        "torch_cpu_allocator": stats() if callable(stats) else f"not exposed by torch {torch.__version__}",
    }


def bench_models(
    root: Path,
    infer: list[Candidate],
    train: list[Candidate],
    labels: tuple[str, ...],
    s: BenchSettings,
    log: Any,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Inference and training measurements of the fbank model and the random WavLM → (inference, training) by model name."""
    models = build_models(labels, s)
    paths = [root / c.path for c in infer]
    dataset = train_dataset(root, train, labels, s)
    inference, training = {}, {}
    for name, model in models.items():
        inference[name] = bench_inference(name, model, paths, s)
        log.info("inference %s: ratio %.3f", name, inference[name]["ratio"]["ratio"])
        training[name] = bench_training(name, model, dataset, s)
        log.info("training %s: ratio %.3f", name, training[name]["ratio"]["ratio"])
    return inference, training
