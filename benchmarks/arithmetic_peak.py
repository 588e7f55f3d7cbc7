"""Achieved arithmetic rate of a training epoch against the machine's practical peak, per precision.

    python benchmarks/arithmetic_peak.py --manifest DIR [--fold 0] [--threads 2] [--steps N] [--precisions fp32 bf16]

A training epoch of fold ``--fold`` of the ``cpu-fbank`` recipe (the manifest folder ``ser ingest
--out DIR`` wrote; the first ``--steps`` batches only if given), run by ``ser_model.train``'s own
epoch loop: its FLOP (``torch.utils.flop_counter.FlopCounterMode``: convolutions, matrix products
and attention, forward and backward; elementwise work is not counted) over its wall seconds is the
achieved rate. Measured in the same run, alternating with the epochs so that a loaded machine hits
both alike: a bare matrix product (1024 × 1024 × 1024) and a bare convolution forward + backward
(the shape of the model's second block, 32 → 64 channels, 3 × 3) in each precision; the faster of
the two is the practical peak. bf16 runs under ``torch.autocast`` as training does (fp32 weights);
on a CPU without bf16 in hardware (``ser_model.runtime.cpu_has_native_bf16``) it is emulated, and
the table says so. Prints a table and writes ``arithmetic_peak.json`` in ``--out``; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import count_flops, machine_info  # noqa: E402
from data_contracts.ingest import read_ingest_outputs  # noqa: E402
from ser_model.optimisation import seeded_model, training_state  # noqa: E402
from ser_model.presets import experiment_config  # noqa: E402
from ser_model.runtime import Runtime, cpu_has_native_bf16  # noqa: E402
from ser_model.train import checked_splits, train_one_epoch  # noqa: E402
from ser_model.training_data import FoldData, fold_data  # noqa: E402

DTYPES = {"fp32": None, "bf16": torch.bfloat16}
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "perf"


def rate(flop: int, seconds: float) -> float:
    """GFLOP/s = FLOP / seconds / 10⁹."""
    return flop / seconds / 1e9


def bare_matmul(dtype: torch.dtype | None, n: int = 1024) -> tuple[int, Callable[[], Any]]:
    """(FLOP, one call): C = A B of two n × n matrices, 2 n³ FLOP, under the precision's autocast."""
    a, b = torch.randn(n, n), torch.randn(n, n)

    def call() -> Any:
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            return a @ b

    return 2 * n**3, call


def bare_convolution(dtype: torch.dtype | None) -> tuple[int, Callable[[], Any]]:
    """(FLOP, one call): a 3 × 3 Conv2d 32 → 64 channels on (16, 32, 40, 150) channels-last
    activations, forward and backward (input and weight gradients), under the precision's autocast."""
    conv = torch.nn.Conv2d(32, 64, 3, padding=1, bias=False)
    x = torch.randn(16, 32, 40, 150).contiguous(memory_format=torch.channels_last).requires_grad_()

    def call() -> Any:
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            out = conv(x)
        out.float().sum().backward()

    return count_flops(call), call


def timed(call: Callable[[], Any], repeats: int) -> float:
    """Median seconds of ``repeats`` calls after one warm-up call."""
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def epoch_run(args: argparse.Namespace, dtype: torch.dtype | None) -> tuple[Callable[[], Any], FoldData]:
    """A fresh model, optimiser and fold data of the recipe; the returned call trains one epoch
    (``ser_model.train.train_one_epoch``), limited to ``--steps`` batches when given."""
    ingested = read_ingest_outputs(args.manifest)
    config = experiment_config(ingested.report["corpus"], preset="cpu-fbank")
    runtime = Runtime(0, 1, torch.device("cpu"), dtype)
    splits = checked_splits(ingested.manifest, ingested.folds, args.fold, True)
    data = fold_data(config, splits, args.root or ingested.report["root"], runtime, score_test=False)
    if args.steps:
        batches = data.sampler.epoch_batches(0)[: args.steps]
        data.loader = torch.utils.data.DataLoader(
            data.train_set, batch_sampler=batches, collate_fn=data.loader.collate_fn
        )
    model, generators = seeded_model(config, runtime)
    state = training_state(model, generators, data, config, runtime)

    def call() -> Any:
        state.epoch = 0  # the same batches every time
        data.sampler.set_epoch(1)
        return train_one_epoch(state, data, config, runtime)

    return call, data


def measure(args: argparse.Namespace, precision: str) -> dict[str, Any]:
    """One precision: the epoch's FLOP and seconds, and the bare operations' rates, alternating."""
    dtype = DTYPES[precision]
    epoch, data = epoch_run(args, dtype)
    epoch_flop = count_flops(epoch)
    matmul_flop, matmul = bare_matmul(dtype)
    conv_flop, conv = bare_convolution(dtype)
    seconds: dict[str, list[float]] = {"epoch": [], "matmul": [], "conv": []}
    for _ in range(args.repeats):
        seconds["epoch"].append(timed(epoch, 1))
        seconds["matmul"].append(timed(matmul, 10))
        seconds["conv"].append(timed(conv, 5))
    median = {name: statistics.median(values) for name, values in seconds.items()}
    achieved = rate(epoch_flop, median["epoch"])
    peak = max(rate(matmul_flop, median["matmul"]), rate(conv_flop, median["conv"]))
    return {
        "precision": precision,
        "native": precision == "fp32" or cpu_has_native_bf16(),
        "batches": len(data.loader),
        "epoch_gflop": epoch_flop / 1e9,
        "epoch_seconds": median["epoch"],
        "epoch_gflops": achieved,
        "matmul_gflops": rate(matmul_flop, median["matmul"]),
        "conv_gflops": rate(conv_flop, median["conv"]),
        "share_of_peak": achieved / peak,
        "seconds": seconds,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", required=True, help="folder written by ser ingest")
    parser.add_argument("--root", help="where the audio is, if it moved since the ingest")
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--steps", type=int, default=None, help="train only the epoch's first N batches")
    parser.add_argument("--repeats", type=int, default=2, help="alternations of epoch and bare operations")
    parser.add_argument("--precisions", nargs="+", choices=sorted(DTYPES), default=["fp32", "bf16"])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    machine = {**machine_info(), "torch_threads": args.threads, "torch": torch.__version__}
    rows = [measure(args, precision) for precision in args.precisions]
    print(f"{machine['cpu_model']}, {args.threads} threads, load at start {machine['load_average_start']}")
    print(
        "| precision | batches | epoch GFLOP | epoch s | epoch GFLOP/s | matmul GFLOP/s | conv GFLOP/s | share of peak |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        name = r["precision"] + ("" if r["native"] else " (emulated)")
        print(
            f"| {name} | {r['batches']} | {r['epoch_gflop']:.0f} | {r['epoch_seconds']:.1f} | "
            f"{r['epoch_gflops']:.1f} | {r['matmul_gflops']:.1f} | {r['conv_gflops']:.1f} | {r['share_of_peak']:.2f} |"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / "arithmetic_peak.json"
    out.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
