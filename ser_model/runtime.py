"""Where a training process runs: its rank in the torchrun group, its device, its autocast precision.

Under torchrun (WORLD_SIZE > 1) every rank joins one process group (gloo on CPU, nccl on CUDA);
the collective operations a fit needs (a barrier, a mean of the epoch's loss terms, gathering
Python objects such as predictions and RNG states) are no-ops in a single process. Seeds: one
for Python, NumPy and torch at once, and independent ones derived per (seed, stream…).
"""

from __future__ import annotations

import os
import random
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ser_model.config import SERConfig

__all__ = [
    "Runtime",
    "resolve_device",
    "autocast_dtype",
    "cpu_has_native_bf16",
    "init_runtime",
    "autocast",
    "barrier",
    "mean_across_ranks",
    "gather_from_ranks",
    "seed_everything",
    "derived_seed",
]


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


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (x86 ``avx512_bf16`` or AMX tiles), where oneDNN's
    bf16 convolutions and matrix products run at about twice the fp32 rate; elsewhere torch emulates
    bf16 and it is slower than fp32."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def autocast_dtype(
    precision: str, device: torch.device, native_cpu_bf16: bool | None = None
) -> torch.dtype | None:
    """TrainConfig.precision → the autocast dtype, None for fp32 (the weights stay fp32 either way).

    "auto": bf16 on a CUDA device that supports it, and on a CPU that multiplies bf16 in hardware
    (``native_cpu_bf16``, default `cpu_has_native_bf16`); fp32 otherwise.
    """
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
        native = cpu_has_native_bf16() if native_cpu_bf16 is None else native_cpu_bf16
        return torch.bfloat16 if device.type == "cpu" and native else None
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


def autocast(runtime: Runtime) -> AbstractContextManager[Any]:
    """The autocast context of this runtime's precision (none for fp32)."""
    if runtime.amp_dtype is None:
        return nullcontext()
    return torch.autocast(runtime.device.type, dtype=runtime.amp_dtype)


def barrier(runtime: Runtime) -> None:
    """Wait for every rank (nothing to wait for in one process)."""
    if runtime.distributed:
        dist.barrier()


def mean_across_ranks(values: dict[str, float], runtime: Runtime) -> dict[str, float]:
    """Each value's mean over the ranks (float64 all-reduce); ``values`` itself in one process."""
    if not runtime.distributed or not values:
        return values
    keys = sorted(values)
    tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=runtime.device)
    dist.all_reduce(tensor)
    return {k: float(v) / runtime.world_size for k, v in zip(keys, tensor.tolist())}


def gather_from_ranks(value: Any, runtime: Runtime) -> list[Any]:
    """Every rank's ``value`` (a picklable object), in rank order: ``[value]`` in one process."""
    if not runtime.distributed:
        return [value]
    gathered: list[Any] = [None] * runtime.world_size
    dist.all_gather_object(gathered, value)
    return gathered


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def derived_seed(seed: int, *stream: int) -> int:
    """An independent 63-bit seed for (seed, stream...), e.g. (seed, rank, 0) for EAM."""
    return int(np.random.SeedSequence([seed, *stream]).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))
