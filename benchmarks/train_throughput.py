"""Training throughput, inference real-time factor and EAM's share of a training step (CPU or GPU).

    python benchmarks/train_throughput.py [--backbones fbank tiny-wavlm] [--batch 16] [--seconds 3] [--steps 6] [--threads 2]

For each backbone, on synthetic waveforms (the figures do not depend on the content):
- training: utterances/s and audio seconds/s of full steps (EAM, forward, multi-loss, backward,
  Adam), and the share of each step spent in energy-adaptive mixup, measured in the same steps;
- inference: real-time factor = compute seconds / audio seconds of `Predictor.predict_arrays`
  (below 1 is faster than real time).
`tiny-wavlm` is a randomly initialised small WavLM (no download): it measures the hf code
path, not WavLM-Large. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ser_model.config import ModelConfig, SERConfig, TrainConfig
from ser_model.eam import energy_adaptive_mixup
from ser_model.hf_backbone import save_random_hf_backbone
from ser_model.inference import Predictor
from ser_model.model import SERModel
from ser_model.optimisation import TrainingObjective

LABELS = ("neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised")


def model_config(backbone: str, work: Path) -> ModelConfig:
    if backbone == "fbank":
        return ModelConfig(backbone="fbank")
    if backbone == "tiny-wavlm":
        folder = save_random_hf_backbone(work / "tiny_wavlm")
        return ModelConfig(backbone=f"hf:{folder}", flam_heads=2)
    return ModelConfig(backbone=backbone)


def synthetic_batch(
    batch: int, seconds: float, sr: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """waves (B, L) with lengths between 0.6·L and L, lengths (B,), labels (B,)."""
    max_len = int(seconds * sr)
    lengths = torch.randint(int(0.6 * max_len), max_len + 1, (batch,), generator=generator)
    waves = (
        0.1
        * torch.randn(batch, max_len, generator=generator)
        * (torch.arange(max_len)[None] < lengths[:, None])
    )
    labels = torch.randint(0, len(LABELS), (batch,), generator=generator)
    return waves, lengths, labels


def train_figures(
    config: SERConfig, batch: int, seconds: float, steps: int, device: torch.device
) -> dict[str, float]:
    model = SERModel(config).to(device).train()
    generator = torch.Generator().manual_seed(0)
    objective = TrainingObjective(model, torch.Generator().manual_seed(1))
    optimizer = torch.optim.Adam(model.parameters(), lr=config.train.lr)
    eam_seconds = step_seconds = utterances = audio = 0.0
    for step in range(steps + 1):  # step 0 warms up
        waves, lengths, labels = (
            t.to(device) for t in synthetic_batch(batch, seconds, config.model.sample_rate, generator)
        )
        _sync(device)
        start = time.perf_counter()
        mixed = energy_adaptive_mixup(
            waves, lengths, F.one_hot(labels, len(LABELS)).float(), generator=generator, config=config.eam
        )
        _sync(device)
        eam_done = time.perf_counter()
        total, _ = objective(mixed.waves, lengths, mixed.targets, labels)
        total.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync(device)
        if step:
            eam_seconds += eam_done - start
            step_seconds += time.perf_counter() - start
            utterances += batch
            audio += float(lengths.sum()) / config.model.sample_rate
    return {
        "utt/s": utterances / step_seconds,
        "audio s/s": audio / step_seconds,
        "EAM share": eam_seconds / step_seconds,
        "step s": step_seconds / steps,
    }


def inference_rtf(folder: Path, seconds: float, n: int) -> float:
    predictor = Predictor.from_pretrained(folder)
    rng = np.random.default_rng(0)
    items = [((0.1 * rng.standard_normal(int(seconds * 16000))).astype(np.float32), 16000) for _ in range(n)]
    predictor.predict_arrays(items[:1])  # warm-up
    start = time.perf_counter()
    predictor.predict_arrays(items)
    return (time.perf_counter() - start) / (seconds * n)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--backbones",
        nargs="+",
        default=["fbank", "tiny-wavlm"],
        help="fbank, tiny-wavlm or hf:<local folder>",
    )
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=3.0, help="longest utterance of a training batch")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(
        f"device {device}, {args.threads} threads, batch {args.batch}, utterances up to {args.seconds} s, {args.steps} timed steps"
    )
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for backbone in args.backbones:
            torch.manual_seed(0)
            config = SERConfig(
                labels=LABELS, model=model_config(backbone, work), train=TrainConfig(batch_size=args.batch)
            )
            figures = train_figures(config, args.batch, args.seconds, args.steps, device)
            folder = SERModel(config).save_pretrained(
                work / f"model-{backbone.replace(':', '_').replace('/', '_')}"
            )
            rtf = inference_rtf(folder, seconds=4.0, n=8)
            print(
                f"{backbone:>12}: train {figures['utt/s']:.1f} utt/s, {figures['audio s/s']:.1f} audio s/s "
                f"({figures['step s']:.2f} s/step); EAM {100 * figures['EAM share']:.1f}% of a step; "
                f"inference RTF {rtf:.4f} (CPU, 4 s inputs)"
            )


if __name__ == "__main__":
    main()
