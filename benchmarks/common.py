"""Shared pieces of the benchmark scripts: the machine, timing, peak memory, ratios, Markdown.

Imports only the standard library (psutil lazily), so that `gpu_wavlm.py` runs on a machine
without soundfile, pandas or psutil.

A ratio compares two sides measured in the same run on the same input:

    ratio = numerator / denominator

and meets its target when ``ratio <= target`` (an overhead: time over time) or ``ratio >= target``
(an efficiency: throughput over throughput).
"""

from __future__ import annotations

import os
import platform
import statistics
import threading
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: dense bf16 peak of a GPU in FLOP/s, by a substring of its device name (first match wins)
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("H200", 989e12),
    ("A100", 312e12),
)


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (Linux), else `platform.processor()`."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity), else `os.cpu_count()`."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages, rounded."""
    return [round(x, 2) for x in os.getloadavg()]


def machine_info() -> dict[str, Any]:
    """The facts that say which machine produced a figure: CPU, cores, load at start, versions.
    Callers add what they set (torch threads, torch version, GPU name)."""
    return {
        "cpu_model": cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "load_average_start": load_average(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def peak_bf16_flops(device_name: str) -> float | None:
    """Dense bf16 peak FLOP/s of the named GPU from `PEAK_BF16_FLOPS`, None when not in the table."""
    for key, flops in PEAK_BF16_FLOPS:
        if key.lower() in device_name.lower():
            return flops
    return None


def interleaved_medians(
    fns: dict[str, Callable[[], Any]],
    *,
    repeats: int,
    warmup: int = 1,
    sync: Callable[[], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Time several functions on the same input, alternating them
    → {name: {"median_s", "runs_s", "median_cpu_s"}}.

    Each function runs `warmup` times untimed, then the functions take turns, `repeats` rounds, so
    that a change of machine load during the run hits both sides of a ratio alike. `median_s` is
    wall-clock time; `median_cpu_s` the CPU time of this process (all its threads, not its child
    processes), which other work on a loaded machine inflates less. `sync` (e.g.
    `torch.cuda.synchronize`) runs before each clock read, so queued GPU work counts.
    """
    if repeats < 1 or warmup < 0 or not fns:
        raise ValueError(
            f"interleaved_medians: got {len(fns)} functions, repeats={repeats}, warmup={warmup}; "
            "expected at least one function, repeats >= 1, warmup >= 0"
        )
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    wall: dict[str, list[float]] = {name: [] for name in fns}
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if sync is not None:
                sync()
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            if sync is not None:
                sync()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return {
        name: {
            "median_s": statistics.median(wall[name]),
            "runs_s": [round(x, 6) for x in wall[name]],
            "median_cpu_s": statistics.median(cpu[name]),
        }
        for name in fns
    }


#: shapes of the random WavLM that `benchmarks/run.py` builds (see `benchmarks/model_perf.py`)
HF_SHAPE_NAMES = ("tiny", "small", "base")


@dataclass(frozen=True)
class BenchSettings:
    """How much work each CPU measurement of `benchmarks/run.py` does.

    ingest_files: files for the ingest ratio (None: every candidate under the root);
    infer_files: files of the one inference batch; batch_size: utterances of the training batch,
    cropped to crop_seconds; hf_shape: one of HF_SHAPE_NAMES.
    """

    quick: bool
    threads: int
    repeats: int
    warmup: int
    ingest_files: int | None
    infer_files: int
    batch_size: int
    crop_seconds: float
    hf_shape: str

    def __post_init__(self) -> None:
        for name in ("threads", "repeats", "infer_files", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"BenchSettings.{name}: got {getattr(self, name)}, expected >= 1")
        if self.ingest_files is not None and self.ingest_files < 1:
            raise ValueError(f"BenchSettings.ingest_files: got {self.ingest_files}, expected None or >= 1")
        if self.warmup < 0:
            raise ValueError(f"BenchSettings.warmup: got {self.warmup}, expected >= 0")
        if self.crop_seconds <= 0:
            raise ValueError(f"BenchSettings.crop_seconds: got {self.crop_seconds}, expected > 0")
        if self.hf_shape not in HF_SHAPE_NAMES:
            raise ValueError(
                f"BenchSettings.hf_shape: got {self.hf_shape!r}, expected one of {HF_SHAPE_NAMES}"
            )


@dataclass(frozen=True)
class Side:
    """One side of a ratio: what was measured, its value and unit."""

    label: str
    value: float
    unit: str


def ratio_entry(
    name: str,
    numerator: Side,
    denominator: Side,
    *,
    target: float,
    at_most: bool,
    cpu_ratio: float | None = None,
    note: str = "",
) -> dict[str, Any]:
    """A ratio record: both sides, ratio = numerator / denominator, the target and whether it is met.

    at_most: the target is met when ratio <= target (an overhead), else when ratio >= target.
    cpu_ratio: the same ratio by CPU time, where it means something (one process, no GPU).
    """
    if numerator.value <= 0 or denominator.value <= 0:
        raise ValueError(
            f"{name}: sides {numerator.label!r} = {numerator.value} and {denominator.label!r} = {denominator.value}; expected both > 0"
        )
    ratio = numerator.value / denominator.value
    return {
        "name": name,
        "numerator": dict(label=numerator.label, value=numerator.value, unit=numerator.unit),
        "denominator": dict(label=denominator.label, value=denominator.value, unit=denominator.unit),
        "ratio": ratio,
        "ratio_cpu_time": cpu_ratio,
        "target": {"op": "<=" if at_most else ">=", "value": target},
        "met": bool(ratio <= target if at_most else ratio >= target),
        "note": note,
    }


def cpu_time_ratio(timings: dict[str, dict[str, Any]], numerator: str, denominator: str) -> float:
    """timings[numerator] / timings[denominator] by median CPU time (`interleaved_medians` output)."""
    return timings[numerator]["median_cpu_s"] / max(timings[denominator]["median_cpu_s"], 1e-9)


class PeakRSS:
    """Peak resident set size of a process tree, sampled every `interval_s` in a background
    thread between `start()` and `stop()` (or as a context manager) → `baseline_mb`, `peak_mb`,
    `delta_mb` (peak − baseline); `current_mb()` reads it now. The tree is `pid` (default this
    process) and its descendants, or only the descendants with `include_root=False` (a server's
    workers without the command that started them).

    Sampling can miss a spike shorter than the interval; the process-lifetime maximum
    (`resource.getrusage`) is reported beside it by the callers.
    """

    def __init__(self, interval_s: float = 0.005, pid: int | None = None, include_root: bool = True):
        import psutil

        self.root = psutil.Process(pid)
        self._psutil = psutil
        self.include_root = include_root
        self.interval_s = interval_s
        self.baseline_mb = self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def current_mb(self) -> float:
        total = self.root.memory_info().rss if self.include_root else 0
        for child in self.root.children(recursive=True):
            try:
                total += child.memory_info().rss
            except self._psutil.Error:  # a worker that exited between listing and reading
                pass
        return total / 2**20

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak_mb = max(self.peak_mb, self.current_mb())

    def start(self) -> PeakRSS:
        self.baseline_mb = self.peak_mb = self.current_mb()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, self.current_mb())

    def __enter__(self) -> PeakRSS:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def delta_mb(self) -> float:
        return self.peak_mb - self.baseline_mb

    def as_dict(self) -> dict[str, float]:
        return {
            "rss_baseline_mb": round(self.baseline_mb, 1),
            "rss_peak_mb": round(self.peak_mb, 1),
            "rss_delta_mb": round(self.delta_mb, 1),
        }


def traced_peak_mb(fn: Callable[[], Any]) -> float:
    """Peak of Python and NumPy allocations (tracemalloc) while `fn` runs, in MiB; torch tensors are not traced."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call of `fn` counted by `torch.utils.flop_counter.FlopCounterMode`: matrix
    products, convolutions and attention, not elementwise work (torch is imported here, so this
    module stays importable without it)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def ratios_markdown(ratios: list[dict[str, Any]]) -> list[str]:
    """A Markdown table of ratio records: both sides, the ratio, the target, met or not met."""
    lines = [
        "| measurement | numerator | denominator | ratio | target | result | ratio by CPU time |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in ratios:
        num, den = r["numerator"], r["denominator"]
        result = "met" if r["met"] else "**not met**"
        cpu = "" if r.get("ratio_cpu_time") is None else f"{r['ratio_cpu_time']:.3f}"
        lines.append(
            f"| {r['name']} | {num['label']}: {_fmt(num['value'])} {num['unit']} | {den['label']}: {_fmt(den['value'])} {den['unit']} "
            f"| {r['ratio']:.3f} | {r['target']['op']} {r['target']['value']} | {result} | {cpu} |"
        )
    return lines


def machine_markdown(machine: dict[str, Any]) -> list[str]:
    """The machine facts as a Markdown bullet list."""
    return [f"- {key}: {_fmt(value)}" for key, value in machine.items()]
