"""The full SER model with WavLM-Large shapes on one GPU in bf16 autocast: steps/s, RTF, memory, FLOP share.

    python3 benchmarks/gpu_wavlm.py --out DIR                      # on a CUDA machine
    python3 benchmarks/gpu_wavlm.py --device cpu --tiny --out DIR  # correctness check, no GPU

The backbone is a randomly initialised `WavLMConfig` with WavLM-Large shapes (hidden 1024,
24 layers, 16 heads, feed-forward 4096, the default 7-layer conv stack at 512 channels, pre-LN,
layer-normalised conv encoder), built locally: no download. Ours: layerdrop 0 so every step does
the same work. `--tiny` uses `ser_model.hf_backbone.tiny_wavlm_config()` and a small batch instead.

Measured on one batch of B utterances of S seconds (default 16 × 4 s), each the median of
alternating repeats after warm-up, the device synchronised before each clock read:

* training step as `ser_model.train.fit` runs it (EAM, forward of SERModel with layer weights,
  FLAM and head, multi-loss, backward, gradient clipping, Adam; backbone_mode "finetune": conv
  encoder frozen) → steps/s; over a bare backbone forward + backward on the same batch → ratio;
  EAM alone as a share of the step;
* inference (SERModel forward, no gradient) over a bare backbone forward → ratio, and its
  real-time factor (seconds of processing per second of audio);
* peak memory of each phase (`torch.cuda.max_memory_allocated`; on CPU the process's max RSS);
* FLOPs of one training step, of the bare backbone forward + backward and of one inference
  forward (`torch.utils.flop_counter.FlopCounterMode`: matrix products, convolutions, attention;
  not elementwise work), the step's FLOP ratio to the bare backbone (a load-independent lower
  bound of the time ratio), and the share of the GPU's dense bf16 peak the step reaches (peak
  from a table by device name: H100 SXM and H200 ~989 TFLOP/s).

Writes gpu_wavlm.json to --out (default: $OUT when set, else benchmarks/results/gpu). Imports
nothing that needs soundfile; when torchaudio is absent (only the fbank backbone uses it), a
placeholder module stands in for it so that `ser_model.model` imports.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import logging
import os
import resource
import sys
import types
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import transformers  # noqa: E402
from transformers import WavLMConfig  # noqa: E402

from benchmarks.common import (  # noqa: E402
    Side,
    count_flops,
    interleaved_medians,
    load_average,
    machine_info,
    peak_bf16_flops,
    ratio_entry,
)


@contextlib.contextmanager
def torchaudio_stand_in():
    """While importing `ser_model`, stand in for a missing torchaudio with a placeholder module
    whose attributes raise AttributeError (only the fbank backbone uses torchaudio); the
    placeholder leaves `sys.modules` afterwards, so transformers still sees torchaudio as absent."""
    if importlib.util.find_spec("torchaudio") is not None:
        yield
        return
    placeholder = types.ModuleType("torchaudio")

    def missing(name: str) -> Any:
        raise AttributeError(
            f"torchaudio.{name}: torchaudio is not installed; only the fbank backbone needs it"
        )

    placeholder.__getattr__ = missing
    sys.modules["torchaudio"] = placeholder
    try:
        yield
    finally:
        del sys.modules["torchaudio"]


with torchaudio_stand_in():
    from ser_model.config import ModelConfig, SERConfig, TrainConfig
    from ser_model.eam import energy_adaptive_mixup
    from ser_model.hf_backbone import tiny_wavlm_config
    from ser_model.losses import multi_loss
    from ser_model.model import SERModel

log = logging.getLogger("benchmarks.gpu_wavlm")

SAMPLE_RATE = 16000
LABELS = ("neutral", "happy", "angry", "sad")
TARGETS = {"inference": 1.10, "training": 1.15}


def wavlm_large_config() -> WavLMConfig:
    """WavLM-Large shapes (see module docstring), random weights, layerdrop 0 (ours)."""
    return WavLMConfig(
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        intermediate_size=4096,
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
        conv_bias=True,
        layerdrop=0.0,
    )


def build_model(tiny: bool, precision: str, device: torch.device) -> SERModel:
    """The full method (EAM, layer weights, FLAM, head, all four losses) on a random WavLM, fine-tuned."""
    config = SERConfig(
        labels=LABELS,
        model=ModelConfig(
            backbone="hf:random-wavlm-" + ("tiny" if tiny else "large"), backbone_mode="finetune"
        ),
        train=TrainConfig(precision=precision, device=device.type),
    )
    torch.manual_seed(0)
    backbone_config = tiny_wavlm_config() if tiny else wavlm_large_config()
    return SERModel(config, backbone_config=backbone_config).to(device)


class Measurements:
    """The batch, model, optimiser and the functions each ratio times, on one device."""

    def __init__(
        self, model: SERModel, batch: int, seconds: float, amp_dtype: torch.dtype | None, device: torch.device
    ):
        self.model, self.device, self.amp_dtype = model, device, amp_dtype
        config = model.config
        g = torch.Generator(device="cpu").manual_seed(0)
        samples = int(round(seconds * SAMPLE_RATE))
        self.waves = (0.1 * torch.randn(batch, samples, generator=g)).to(device)  # (B, L)
        self.lengths = torch.full((batch,), samples, dtype=torch.long, device=device)  # (B,)
        self.labels = (torch.arange(batch) % config.n_classes).to(device)  # (B,)
        self.targets = F.one_hot(self.labels, config.n_classes).float()  # (B, C)
        self.eam_generator = torch.Generator(device=device).manual_seed(1)
        self.loss_generator = torch.Generator(device=device).manual_seed(2)
        groups = [{"params": model.main_parameters(), "lr": config.train.lr}]
        if model.center_parameters():
            groups.append({"params": model.center_parameters(), "lr": config.train.center_lr})
        self.optimizer = torch.optim.Adam(groups)
        self.trainable = [p for p in model.parameters() if p.requires_grad]

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    def eam(self):
        cfg = self.model.config.eam
        return energy_adaptive_mixup(
            self.waves, self.lengths, self.targets, generator=self.eam_generator, config=cfg
        )

    def train_step(self) -> None:
        """EAM + forward + multi-loss + backward + clip + Adam, as `fit` does (one rank, no accumulation)."""
        model = self.model.train()
        mixed = self.eam()
        with self.autocast():
            out = model(mixed.waves, self.lengths)
            total, _ = multi_loss(
                out,
                mixed.targets,
                self.labels,
                model.centers,
                model.supcon_proj,
                model.config.loss,
                self.loss_generator,
            )
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(self.trainable, model.config.train.grad_clip)
        self.optimizer.step()

    def backbone_train(self) -> None:
        """Bare backbone forward + backward (sum of the frames) on the same batch."""
        self.model.train()
        self.model.zero_grad(set_to_none=True)
        with self.autocast():
            frames, _ = self.model.backbone(self.waves, self.lengths)  # (B, T, D)
        frames.float().sum().backward()

    @torch.no_grad()
    def infer(self) -> None:
        with self.autocast():
            self.model.eval()(self.waves, self.lengths)

    @torch.no_grad()
    def backbone_infer(self) -> None:
        with self.autocast():
            self.model.eval().backbone(self.waves, self.lengths)


def peak_memory_mb(device: torch.device) -> float:
    """Peak allocated by torch on a CUDA device since the last reset; on CPU the process's max RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(m: Measurements, repeats: int, warmup: int) -> dict[str, Any]:
    """Training and inference timings, ratios, memory and FLOPs (module docstring)."""
    device = m.device
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    reset = torch.cuda.reset_peak_memory_stats if device.type == "cuda" else (lambda: None)
    batch, audio_s = m.waves.shape[0], float(m.lengths.sum()) / SAMPLE_RATE

    reset()
    train = interleaved_medians(
        {"step": m.train_step, "backbone": m.backbone_train, "eam": m.eam},
        repeats=repeats,
        warmup=warmup,
        sync=sync,
    )
    train_peak = peak_memory_mb(device)
    reset()
    infer = interleaved_medians(
        {"model": m.infer, "backbone": m.backbone_infer}, repeats=repeats, warmup=warmup, sync=sync
    )
    infer_peak = peak_memory_mb(device)
    step_flops, bare_flops, infer_flops = (
        count_flops(m.train_step),
        count_flops(m.backbone_train),
        count_flops(m.infer),
    )

    step_s, infer_s = train["step"]["median_s"], infer["model"]["median_s"]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = peak_bf16_flops(name) if device.type == "cuda" else None
    ratios = [
        ratio_entry(
            "training step, WavLM",
            Side("EAM + forward + multi-loss + backward + clip + Adam", step_s, "s"),
            Side("bare backbone forward + backward, same batch", train["backbone"]["median_s"], "s"),
            target=TARGETS["training"],
            at_most=True,
            note=f"batch {batch} x {audio_s / batch:g} s",
        ),
        ratio_entry(
            "inference overhead, WavLM",
            Side("SERModel forward (backbone + layer weights + FLAM + head)", infer_s, "s"),
            Side("bare backbone forward, same batch", infer["backbone"]["median_s"], "s"),
            target=TARGETS["inference"],
            at_most=True,
            note="tensors already on the device: no file decoding",
        ),
    ]
    return {
        "device_name": name,
        "batch": batch,
        "audio_s": audio_s,
        "training": {
            "timings": train,
            "steps_per_s": 1.0 / step_s,
            "utterances_per_s": batch / step_s,
            "eam_share_of_step": train["eam"]["median_s"] / step_s,
            "peak_memory_mb": round(train_peak, 1),
            "flops_per_step": step_flops,
            "flops_backbone_forward_backward": bare_flops,
            "flop_ratio": step_flops / bare_flops,
            "achieved_flops_per_s": step_flops / step_s,
            "share_of_peak_bf16": None if peak is None else step_flops / step_s / peak,
        },
        "inference": {
            "timings": infer,
            "rtf": infer_s / audio_s,
            "peak_memory_mb": round(infer_peak, 1),
            "flops": infer_flops,
            "share_of_peak_bf16": None if peak is None else infer_flops / infer_s / peak,
        },
        "peak_bf16_flops": peak,
        "ratios": ratios,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=Path(os.environ.get("OUT", REPO / "benchmarks" / "results" / "gpu"))
    )
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    parser.add_argument(
        "--tiny", action="store_true", help="tiny WavLM and batch 2 x 1 s (a correctness check on CPU)"
    )
    parser.add_argument(
        "--batch", type=int, default=None, help="utterances per batch (default 16; 2 with --tiny)"
    )
    parser.add_argument(
        "--seconds", type=float, default=None, help="seconds per utterance (default 4; 1 with --tiny)"
    )
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats (default 10; 2 with --tiny)")
    parser.add_argument(
        "--warmup", type=int, default=None, help="untimed warm-up runs (default 3; 1 with --tiny)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    batch = args.batch or (2 if args.tiny else 16)
    seconds = args.seconds or (1.0 if args.tiny else 4.0)
    repeats = args.repeats or (2 if args.tiny else 10)
    warmup = args.warmup if args.warmup is not None else (1 if args.tiny else 3)
    if batch < 2 or seconds <= 0 or repeats < 1 or warmup < 0:
        raise SystemExit(
            f"expected --batch >= 2 (EAM mixes pairs), --seconds > 0, --repeats >= 1, --warmup >= 0; "
            f"got {batch}, {seconds}, {repeats}, {warmup}"
        )
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            f"--device {args.device}: CUDA is not available here; use --device cpu --tiny for a correctness check"
        )
    machine = {
        **machine_info(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        torch.cuda.set_device(device)
        machine.update(
            gpu=torch.cuda.get_device_name(device),
            gpu_capability=list(torch.cuda.get_device_capability(device)),
            gpu_memory_mb=round(torch.cuda.get_device_properties(device).total_memory / 2**20),
        )
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    amp_dtype = torch.bfloat16 if args.precision == "bf16" else None
    model = build_model(args.tiny, args.precision, device)
    log.info(
        "built %s WavLM SER model: %.2f M parameters on %s",
        "tiny" if args.tiny else "large",
        sum(p.numel() for p in model.parameters()) / 1e6,
        device,
    )
    results = measure(Measurements(model, batch, seconds, amp_dtype, device), repeats, warmup)
    report = {
        "settings": {
            "tiny": args.tiny,
            "batch": batch,
            "seconds": seconds,
            "precision": args.precision,
            "repeats": repeats,
            "warmup": warmup,
            "device": str(device),
        },
        "machine": machine,
        "load_average_end": load_average(),
        "parameters_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "trainable_parameters_m": sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6,
        "backbone_config": model.backbone.config_dict(),
        **results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "gpu_wavlm.json"
    path.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    t, i = results["training"], results["inference"]
    share = (
        "n/a (device not in the peak table)"
        if t["share_of_peak_bf16"] is None
        else f"{t['share_of_peak_bf16']:.1%}"
    )
    print(
        f"{results['device_name']}: {t['steps_per_s']:.2f} training steps/s (batch {batch} x {seconds:g} s), "
        f"inference RTF {i['rtf']:.5f}, peak memory train {t['peak_memory_mb']:.0f} MiB / inference {i['peak_memory_mb']:.0f} MiB, "
        f"{t['flops_per_step'] / 1e9:.4g} GFLOP per step ({t['flop_ratio']:.3f} x the bare backbone's), share of bf16 peak {share}"
    )
    for r in results["ratios"]:
        print(
            f"{r['name']}: {r['ratio']:.3f} (target {r['target']['op']} {r['target']['value']}: {'met' if r['met'] else 'not met'})"
        )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
