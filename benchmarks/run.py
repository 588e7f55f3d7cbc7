"""Performance of the library on CPU, each ratio's two sides measured in one run on the same input.

    python benchmarks/run.py [--root ../shared/data/ravdess] [--out benchmarks/results/perf] [--quick]

Writes perf.json and perf.md under --out. Every ratio compares the library path with the bare
operation it wraps, on the same files or the same batch, after a warm-up, as the median of
repeats taken in alternation (A, B, A, B, ...), with torch threads fixed:

* ingest decode: `data_contracts.probing.probe_all` (read bytes, sha256, decode, every audio
  check), 1 worker and all cores, in files/s per core, over bare `soundfile.read` of the same
  files in one process. Target >= 0.8.
* the `ser` command as a user times it (`benchmarks/cli_perf.py`, fresh processes): `ser ingest`
  at 1 worker and all cores over a bare soundfile loop of the same files (target <= 2), all
  cores over 1 worker (target <= 1), and `ser --help` (target <= 1 s).
* inference overhead: `Predictor.predict_files` (decode, down-mix, resample, backbone, FLAM,
  head, softmax) over a bare backbone forward on the same padded batch, for the fbank backbone
  and a random WavLM (hf). Target <= 1.10.
* training step: EAM + forward + multi-loss + backward + gradient clipping + Adam over a bare
  backbone forward + backward (sum of frames) on the same batch. Target <= 1.15. EAM's share of
  the step and data loading's share of an iteration (dataset __getitem__ from the in-memory
  cache + collate_padded, serial as with num_workers=0) are reported beside it.
* peak memory of each phase (RSS of the process and its worker processes, sampled), the traced
  peak of Python/NumPy allocations (tracemalloc) of decoding, and the process-lifetime maximum.
* real-time factor on CPU: seconds of processing (Predictor) per second of audio.

The corpus root is read in the RAVDESS layout (`Actor_NN/03-01-...`); `--quick` uses few files,
few repeats and a tiny WavLM, for a smoke run. Figures, not assertions: a machine shared with
other work gives noisy figures, so perf.md records the load average at start and end.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import soundfile as sf  # noqa: E402

from benchmarks.cli_perf import bench_commands  # noqa: E402
from benchmarks.common import (  # noqa: E402
    HF_SHAPE_NAMES,
    BenchSettings,
    PeakRSS,
    Side,
    cpu_time_ratio,
    interleaved_medians,
    load_average,
    machine_info,
    machine_markdown,
    ratio_entry,
    ratios_markdown,
    traced_peak_mb,
    usable_cores,
)
from data_contracts.audio import AUDIO_CHECKS  # noqa: E402
from data_contracts.corpora import parse_corpus  # noqa: E402
from data_contracts.corpora.base import Candidate, QuarantineRow  # noqa: E402
from data_contracts.labels import LABELS  # noqa: E402
from data_contracts.probing import probe_all  # noqa: E402
from data_contracts.source import open_source  # noqa: E402
from ser_stack.settings import SHARED_RAVDESS  # noqa: E402

log = logging.getLogger("benchmarks.run")

DEFAULT_ROOT = SHARED_RAVDESS
DEFAULT_OUT = REPO / "benchmarks" / "results" / "perf"
CORPUS = "ravdess"
INGEST_TARGET = 0.8


def spread(items: list, n: int) -> list:
    """`n` items evenly spaced over `items` (all of them when there are fewer)."""
    if len(items) <= n:
        return list(items)
    if n == 1:
        return items[:1]
    return [items[round(i * (len(items) - 1) / (n - 1))] for i in range(n)]


# ---------------------------------------------------------------------------- ingest


def bench_ingest(root: Path, candidates: list[Candidate], s: BenchSettings) -> dict[str, Any]:
    """probe_all (1 worker, all cores) vs bare soundfile.read of the same files."""
    source = open_source(root)
    checks = AUDIO_CHECKS[CORPUS]
    paths = [root / c.path for c in candidates]
    n = len(candidates)
    outcomes = probe_all(source, candidates, checks, workers=1, progress=False)
    quarantined = sum(isinstance(o, QuarantineRow) for o in outcomes)

    def bare() -> None:
        for path in paths:
            sf.read(path, dtype="float32")

    worker_counts = sorted({1, usable_cores()})
    fns = {"bare": bare}
    fns.update(
        {
            f"probe_{w}": (lambda w=w: probe_all(source, candidates, checks, workers=w, progress=False))
            for w in worker_counts
        }
    )
    with PeakRSS() as mem:
        timings = interleaved_medians(fns, repeats=s.repeats, warmup=s.warmup)
    bare_rate = n / timings["bare"]["median_s"]
    ratios = [
        ratio_entry(
            f"ingest decode, {w} worker(s)",
            Side(f"probe_all, {w} worker(s), per core", n / timings[f"probe_{w}"]["median_s"] / w, "files/s"),
            Side("bare soundfile.read, 1 process", bare_rate, "files/s"),
            target=INGEST_TARGET,
            at_most=False,
            cpu_ratio=cpu_time_ratio(timings, "bare", "probe_1") if w == 1 else None,
            note="probe_all reads the bytes, hashes them (sha256), decodes from memory and runs every audio check"
            + ("" if w == 1 else f", in a pool of {w} threads"),
        )
        for w in worker_counts
    ]
    traced = traced_peak_mb(lambda: probe_all(source, candidates, checks, workers=1, progress=False))
    return {
        "files": n,
        "quarantined": quarantined,
        "timings": timings,
        "ratios": ratios,
        "memory": {**mem.as_dict(), "tracemalloc_peak_mb_1_worker": round(traced, 1)},
    }


# ---------------------------------------------------------------------------- report


def perf_markdown(report: dict[str, Any]) -> str:
    """perf.md: the machine, every ratio with its target, shares, real-time factors, memory."""
    s = report["settings"]
    lines = [
        "# Performance (CPU)",
        "",
        f"Produced by `python benchmarks/run.py{' --quick' if s['quick'] else ''}` on {report['finished']}. "
        f"Median of {s['repeats']} alternating repeats after {s['warmup']} warm-up run(s); corpus root `{report['root']}`.",
        "",
        "## Machine",
        *machine_markdown(report["machine"]),
        f"- load_average_end: {report['load_average_end']}",
        "",
        "## Ratios (both sides measured in this run on the same input)",
        *ratios_markdown(report["ratios"]),
        "",
        "## The `ser` command",
        f"`{' '.join(report['commands']['command'])} --help`, a fresh process: {report['commands']['help']['median_s']:.3f} s "
        f"(target <= {report['commands']['help']['target_s']} s: {'met' if report['commands']['help']['met'] else '**not met**'}). "
        f"`ser ingest` over {report['commands']['files']} files: see the ratios above.",
        "",
        "## Training step breakdown",
        "| backbone | step s | utt/s | EAM share of step | data loading share of iteration | FLOP ratio step / bare backbone | parameters (M) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, t in report["training"].items():
        lines.append(
            f"| {name} | {t['timings']['step']['median_s']:.4f} | {t['utterances_per_s']:.1f} | {t['eam_share_of_step']:.1%} "
            f"| {t['data_share_of_iteration']:.1%} | {t['flop_ratio']:.3f} | {t['parameters_m']:.2f} |"
        )
    lines += [
        "",
        "## Real-time factor on CPU (processing s / audio s; below 1 is faster than real time)",
        "| backbone | audio s | Predictor s | RTF | RTF of the bare backbone |",
        "|---|---|---|---|---|",
    ]
    for r in report["rtf"]:
        lines.append(
            f"| {r['backbone']} | {r['audio_s']:.1f} | {r['processing_s']:.4f} | {r['rtf']:.4f} | {r['rtf_bare_backbone']:.4f} |"
        )
    lines += [
        "",
        "## Peak memory",
        "| phase | RSS at start MiB | RSS peak MiB | peak − start MiB | tracemalloc peak MiB (Python + NumPy) |",
        "|---|---|---|---|---|",
    ]
    for phase, m in report["memory"]["phases"].items():
        traced = next((v for k, v in m.items() if k.startswith("tracemalloc")), "")
        lines.append(
            f"| {phase} | {m['rss_baseline_mb']} | {m['rss_peak_mb']} | {m['rss_delta_mb']} | {traced} |"
        )
    life = report["memory"]["lifetime"]
    lines += [
        "",
        f"Process-lifetime maximum RSS: {life['max_rss_self_mb']} MiB (this process), {life['max_rss_children_mb']} MiB "
        f"(largest worker). Torch CPU allocator statistics: {life['torch_cpu_allocator']}.",
        "",
        "## Notes",
        *[f"- {r['name']}: {r['note']}" for r in report["ratios"] if r["note"]],
    ]
    if s["quick"]:
        lines += ["- `--quick`: few files, few repeats, tiny WavLM: a smoke run, not figures to quote."]
    return "\n".join(lines) + "\n"


def run(root: Path, out: Path, s: BenchSettings) -> dict[str, Any]:
    """Every measurement, in one process; writes perf.json and perf.md under `out` and returns the report."""
    machine = machine_info()
    root = root.resolve()
    parsed = parse_corpus(CORPUS, open_source(root))
    candidates = sorted(parsed.candidates, key=lambda c: c.path)
    if len(candidates) < 2:
        raise SystemExit(
            f"{root}: found {len(candidates)} RAVDESS speech files (Actor_NN/03-01-*.wav|flac); expected at least 2"
        )
    ingest_set = candidates if s.ingest_files is None else spread(candidates, s.ingest_files)
    log.info("%s: %d candidates; ingest on %d files", root, len(candidates), len(ingest_set))
    ingest = bench_ingest(root, ingest_set, s)
    log.info("ingest: ratios %s", [round(r["ratio"], 3) for r in ingest["ratios"]])
    commands = bench_commands(
        root, [c.path for c in ingest_set], s.ingest_files is None, usable_cores(), s.repeats, s.warmup
    )
    log.info(
        "ser command: ratios %s, ser --help %.2f s",
        [round(r["ratio"], 3) for r in commands["ratios"]],
        commands["help"]["median_s"],
    )

    from benchmarks import model_perf

    machine.update(model_perf.torch_facts(s.threads))
    inference, training = model_perf.bench_models(
        root, spread(candidates, s.infer_files), spread(candidates, s.batch_size), LABELS[CORPUS], s, log
    )
    phases = {"ingest": ingest["memory"]}
    phases.update({f"inference {k}": v["memory"] for k, v in inference.items()})
    phases.update({f"training {k}": v["memory"] for k, v in training.items()})
    report = {
        "finished": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "root": str(root),
        "settings": asdict(s),
        "machine": machine,
        "load_average_end": load_average(),
        "ratios": ingest["ratios"]
        + commands["ratios"]
        + [v["ratio"] for v in inference.values()]
        + [v["ratio"] for v in training.values()],
        "ingest": ingest,
        "commands": commands,
        "inference": inference,
        "training": training,
        "rtf": [v["rtf"] for v in inference.values()],
        "memory": {"phases": phases, "lifetime": model_perf.lifetime_memory()},
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "perf.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (out / "perf.md").write_text(perf_markdown(report), encoding="utf-8")
    return report


def settings_from_args(args: argparse.Namespace) -> BenchSettings:
    if args.quick:
        return BenchSettings(
            quick=True,
            threads=args.threads,
            repeats=1,
            warmup=1,
            ingest_files=4,
            infer_files=2,
            batch_size=2,
            crop_seconds=args.crop_seconds,
            hf_shape="tiny",
        )
    return BenchSettings(
        quick=False,
        threads=args.threads,
        repeats=args.repeats,
        warmup=1,
        ingest_files=None,
        infer_files=16,
        batch_size=16,
        crop_seconds=args.crop_seconds,
        hf_shape=args.hf_shape,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="corpus root in the RAVDESS layout")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for perf.json and perf.md")
    parser.add_argument("--quick", action="store_true", help="few files, 1 repeat, tiny WavLM: a smoke run")
    parser.add_argument(
        "--threads", type=int, default=usable_cores(), help="torch threads (default: usable cores)"
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per side (not with --quick)")
    parser.add_argument(
        "--crop-seconds", type=float, default=4.0, help="training crop (RAVDESS utterances are 3-5 s)"
    )
    parser.add_argument(
        "--hf-shape", choices=HF_SHAPE_NAMES, default="small", help="random WavLM shape (not with --quick)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    report = run(args.root, args.out, settings_from_args(args))
    print((args.out / "perf.md").read_text(encoding="utf-8"))
    missed = [r["name"] for r in report["ratios"] if not r["met"]]
    print(f"wrote {args.out / 'perf.json'}; targets not met: {missed or 'none'}")


if __name__ == "__main__":
    main()
