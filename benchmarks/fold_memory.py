"""Memory of one fold: peak RSS of every process of a fold run, and of a long manifest's epoch.

    python benchmarks/fold_memory.py launch [--root ../shared/data/ravdess] [--fold 0] [--epochs 2] [--baseline REV]
    python benchmarks/fold_memory.py stack  [--root ../shared/data/ravdess] [--fold 0] [--epochs 2]
    python benchmarks/fold_memory.py long   [--hours 2 20] [--epochs 1] [--crop-seconds 0.5]
    python benchmarks/fold_memory.py imports

``launch``: one fold of RAVDESS the way a ``train-fold`` flow run starts it
(``ser_model.launch.worker_command``: ``ser_model.worker`` → ``ser_model.train.fit``), from this
process; with ``--baseline REV`` the same fold of that git revision too (its files exported, its
worker under a torchrun launcher as it was then), the two taking turns ``--repeats`` times, so the
machine's load hits both alike; the CPU seconds of each process are reported beside wall time. ``stack``: the same fold through the live stack (``infra/up`` first, with
``eval "$(infra/env.sh)"``): the ``train`` flow run on the work pool, its ``train-fold`` flow run,
and its worker, beside the servers; the sum over every process of the stack is the
stack's RSS. Both poll the process tree every ``--interval`` seconds (psutil) and keep each
process's peak RSS and the peak of the sum; epoch times come from the fold's metrics.jsonl.

``long``: a manifest of ``--hours`` of audio (RAVDESS files referenced over and over, each row its
own utterance) trains ``--epochs`` epochs in a worker (``--crop-seconds`` short training crops keep
20 hours to minutes on two cores: every file is still decoded whole); the peak RSS of each length and their ratio
say whether memory depends on the corpus's length (``ser_model.data``'s audio-cache budget).

``imports``: the modules loaded by importing each flow module in a fresh interpreter, and its
RSS: whether the processes that only wait load torch.

Prints tables and writes ``fold_memory-<mode>.json`` in ``--out``. Asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import load_average, machine_info  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DEFAULT_ROOT = REPO.parent / "shared" / "data" / "ravdess"
DEFAULT_OUT = REPO / "benchmarks" / "results" / "memory"
MB = 2**20


def process_role(proc: psutil.Process, parent_role: str | None) -> str:
    """What a process of a fold run is, from its command line and its parent's role."""
    try:
        cmd = " ".join(proc.cmdline())
    except psutil.Error:
        return "gone"
    if "torch.distributed.run" in cmd:
        return "torchrun launcher"
    if "torch.cuda.device_count" in cmd:
        return "CUDA device count"
    if "ser_model.worker" in cmd:
        return "dataloader worker" if parent_role == "fold worker" else "fold worker"
    if parent_role == "prefect worker":
        return "flow run"
    for word, role in (
        ("weed", "seaweedfs"),
        ("mlflow", "mlflow server"),
        ("prefect server", "prefect server"),
        ("worker start", "prefect worker"),
    ):
        if word in cmd:
            return role
    return parent_role + " child" if parent_role else os.path.basename(cmd.split(" ")[0] or "?")


class TreePeaks:
    """Peak RSS of every process under ``roots()`` (pids, re-read each sample) and of their sum,
    sampled every ``interval_s`` seconds in a background thread. A process that had a torchrun
    launcher or a fold worker as a child is named the ``train-fold flow``; another flow run the ``train flow``."""

    def __init__(self, roots, interval_s: float = 0.1):
        self.roots = roots
        self.interval_s = interval_s
        self.peaks: dict[int, dict[str, Any]] = {}
        self.total_peak_mb = 0.0
        self.launchers_of: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _walk(self) -> list[tuple[psutil.Process, str]]:
        found, todo = [], []
        for pid in self.roots():
            try:
                todo.append((psutil.Process(pid), None))
            except psutil.Error:
                continue
        while todo:
            proc, parent_role = todo.pop()
            role = process_role(proc, parent_role)
            found.append((proc, role))
            try:
                children = proc.children()
            except psutil.Error:
                continue
            todo.extend((child, role) for child in children)
            launched = ("torchrun launcher", "fold worker")
            if role == "flow run" and any(process_role(c, role) in launched for c in children):
                self.launchers_of.add(proc.pid)
        return found

    def sample(self) -> None:
        total = 0.0
        for proc, role in self._walk():
            try:
                rss = proc.memory_info().rss / MB
            except psutil.Error:
                continue
            total += rss
            entry = self.peaks.setdefault(proc.pid, {"pid": proc.pid, "role": role, "peak_mb": 0.0})
            entry["peak_mb"] = max(entry["peak_mb"], rss)
            try:
                times = proc.cpu_times()
                entry["cpu_s"] = round(times.user + times.system, 1)
            except psutil.Error:
                pass
        self.total_peak_mb = max(self.total_peak_mb, total)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def __enter__(self) -> TreePeaks:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def table(self) -> list[dict[str, Any]]:
        rows = []
        for entry in self.peaks.values():
            role = entry["role"]
            if role == "flow run":
                role = "train-fold flow" if entry["pid"] in self.launchers_of else "train flow"
            rows.append({**entry, "role": role, "peak_mb": round(entry["peak_mb"], 1)})
        return sorted(rows, key=lambda r: -r["peak_mb"])


def print_table(title: str, rows: list[dict[str, Any]], total_mb: float) -> None:
    print(f"\n{title}")
    print(f"{'process':<22} {'pid':>8} {'peak RSS MiB':>13} {'CPU s':>8}")
    for row in rows:
        print(f"{row['role']:<22} {row['pid']:>8} {row['peak_mb']:>13.1f} {row.get('cpu_s', 0):>8.1f}")
    print(f"{'all at once (peak)':<22} {'':>8} {total_mb:>13.1f}")


def ingested(root: Path, work: Path):
    """The RAVDESS manifest and folds (``ser ingest`` in memory)."""
    from data_contracts.ingest import run_ingest

    return run_ingest("ravdess", str(root), progress=False)


def fold_config(epochs: int, extra: dict[str, Any] | None = None):
    from ser_model.presets import DEFAULT_PRESET, experiment_config

    return experiment_config("ravdess", DEFAULT_PRESET, overrides={"train.epochs": epochs, **(extra or {})})


def run_fold(
    config, manifest, folds, fold: int, root: str, work: Path, interval_s: float, tree: Path = REPO
) -> dict[str, Any]:
    """One fold launched as the train-fold flow launches it, from the code in ``tree`` (this
    checkout, or a baseline's: then with torchrun, as every fold was launched before
    ``ser_model.launch.worker_command``), sampled; its epochs' seconds."""
    from ser_model.launch import (
        CONFIG_FILE,
        METRICS_FILE,
        FoldJob,
        torchrun_command,
        worker_command,
        worker_env,
    )

    inputs = work / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    config.to_json(inputs / CONFIG_FILE)
    manifest.to_parquet(inputs / "manifest.parquet", index=False)
    folds.to_parquet(inputs / "folds.parquet", index=False)
    job = FoldJob(
        "ravdess",
        fold,
        inputs / CONFIG_FILE,
        inputs / "manifest.parquet",
        inputs / "folds.parquet",
        root,
        work / "fold",
        config.train.epochs,
    )
    command = (worker_command if tree == REPO else torchrun_command)(1, job.worker_args())
    env = {**worker_env(), "PYTHONPATH": str(tree)}
    started = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=tree, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    with TreePeaks(lambda: [process.pid], interval_s) as peaks:
        output = process.communicate()[0]
    wall = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"the fold's worker failed (exit {process.returncode}):\n{output[-3000:]}")
    history = [json.loads(line) for line in (job.out_dir / METRICS_FILE).read_text().splitlines()]
    return {
        "processes": peaks.table(),
        "total_peak_mb": round(peaks.total_peak_mb, 1),
        "epoch_seconds": [round(r["seconds"], 2) for r in history],
        "valid": [r.get("valid") for r in history],
        "wall_s": round(wall, 1),
    }


def baseline_tree(rev: str, work: Path) -> Path:
    """The files of git revision ``rev`` of this repository, under ``work``."""
    tree = work / f"baseline-{rev}"
    tree.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", rev], cwd=REPO, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


def launch_mode(args: argparse.Namespace) -> dict[str, Any]:
    """This checkout's fold, and with ``--baseline REV`` that revision's, taking turns."""
    out: dict[str, Any] = {"runs": []}
    with tempfile.TemporaryDirectory(prefix="fold-memory-") as tmp:
        data = ingested(args.root, Path(tmp))
        sides = {"this checkout": REPO}
        if args.baseline:
            sides = {f"baseline {args.baseline}": baseline_tree(args.baseline, Path(tmp)), **sides}
        for repeat in range(args.repeats):
            for name, tree in sides.items():
                work = Path(tmp) / f"{len(out['runs'])}"
                result = run_fold(
                    fold_config(args.epochs),
                    data.manifest,
                    data.folds,
                    args.fold,
                    str(args.root),
                    work,
                    args.interval,
                    tree,
                )
                print_table(
                    f"{name}: fold {args.fold}, {args.epochs} epochs",
                    result["processes"],
                    result["total_peak_mb"],
                )
                print(
                    f"epoch seconds {result['epoch_seconds']}, wall {result['wall_s']} s, load {load_average()}"
                )
                out["runs"].append({"side": name, "repeat": repeat, **result})
    return out


def stack_pids(state_dir: Path) -> list[int]:
    """The pids recorded by infra/up (infra/ser_infra/state.py) (each the leader of one server's process group)."""
    pids = []
    for path in (state_dir / "pids").glob("*.json"):
        try:
            pids.append(int(json.loads(path.read_text())["pid"]))
        except (OSError, ValueError, KeyError):
            continue
    return pids


def stack_mode(args: argparse.Namespace) -> dict[str, Any]:
    """The fold through the live stack's deployments (infra/demo's commands), every stack process sampled."""
    from ser_stack.settings import StackSettings

    settings = StackSettings.from_env()
    python = str(REPO / ".venv" / "bin" / "python")
    subprocess.run(
        [
            python,
            "-m",
            "flows.follow",
            "ingest/ingest-ravdess",
            "--params",
            json.dumps({"root": str(args.root), "announce": False}),
        ],
        check=True,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
    )
    params = {"overrides": {"train.epochs": args.epochs}, "folds": [args.fold], "release": False}
    with TreePeaks(lambda: stack_pids(settings.state_dir), args.interval) as peaks:
        started = time.perf_counter()
        subprocess.run(
            [python, "-m", "flows.follow", "train/train-ravdess", "--params", json.dumps(params)],
            check=True,
            cwd=REPO,
            stdout=subprocess.DEVNULL,
        )
        wall = time.perf_counter() - started
    rows = peaks.table()
    print_table(f"one fold ({args.fold}) through the live stack", rows, peaks.total_peak_mb)
    return {"processes": rows, "total_peak_mb": round(peaks.total_peak_mb, 1), "wall_s": round(wall, 1)}


def long_manifest(manifest, folds, hours: float):
    """Fold 0's training rows repeated (each copy its own utt_id) until they hold ``hours`` of
    audio; the validation and test rows as they are."""
    import pandas as pd

    from ser_model.train import training_splits

    splits = training_splits(manifest, folds, 0)
    train = splits["train"]
    copies = max(1, int(round(hours * 3600 / train["duration_s"].sum())))
    repeated = pd.concat(
        [train.assign(utt_id=train["utt_id"].astype(str) + f"#{k}") for k in range(copies)], ignore_index=True
    )
    return pd.concat([repeated, splits["valid"], splits["test"]], ignore_index=True), copies


def long_mode(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"runs": []}
    with tempfile.TemporaryDirectory(prefix="fold-memory-long-") as tmp:
        data = ingested(args.root, Path(tmp))
        for hours in args.hours:
            manifest, copies = long_manifest(data.manifest, data.folds, hours)
            work = Path(tmp) / f"h{hours}"
            result = run_fold(
                fold_config(args.epochs, {"train.valid_every": 1, "train.max_seconds": args.crop_seconds}),
                manifest,
                data.folds,
                0,
                str(args.root),
                work,
                args.interval,
            )
            train_hours = manifest["duration_s"].sum() / 3600
            print_table(
                f"{train_hours:.1f} h manifest ({copies} copies of fold 0's training rows)",
                result["processes"],
                result["total_peak_mb"],
            )
            out["runs"].append({"hours": round(train_hours, 2), "copies": copies, **result})
    worker = [max(p["peak_mb"] for p in r["processes"] if p["role"] == "fold worker") for r in out["runs"]]
    if len(worker) >= 2:
        out["worker_peak_ratio_longest_to_shortest"] = round(worker[-1] / worker[0], 3)
        print(
            f"\nfold worker peak RSS, {out['runs'][-1]['hours']} h / {out['runs'][0]['hours']} h: {out['worker_peak_ratio_longest_to_shortest']}"
        )
    return out


FLOW_MODULES = ("flows.train", "flows.fold_runs", "flows.tune", "flows.retrain", "flows.ingest")


def imports_mode(args: argparse.Namespace) -> dict[str, Any]:
    code = (
        "import importlib, json, sys, resource; importlib.import_module(sys.argv[1]); "
        "print(json.dumps({'torch': 'torch' in sys.modules, 'transformers': 'transformers' in sys.modules, "
        "'modules': len(sys.modules), 'maxrss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))"
    )
    rows = {}
    print(f"\n{'module':<18} {'torch':>6} {'modules':>8} {'max RSS MiB':>12}")
    for module in FLOW_MODULES:
        done = subprocess.run([sys.executable, "-c", code, module], capture_output=True, text=True, cwd=REPO)
        if done.returncode != 0:
            rows[module] = {"error": done.stderr.strip().splitlines()[-1]}
            print(f"{module:<18} error: {rows[module]['error']}")
            continue
        rows[module] = json.loads(done.stdout.strip().splitlines()[-1])
        r = rows[module]
        print(f"{module:<18} {str(r['torch']):>6} {r['modules']:>8} {r['maxrss_mb']:>12.1f}")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=("launch", "stack", "long", "imports"))
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="RAVDESS in its official layout")
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument(
        "--hours", type=float, nargs="+", default=[2.0, 20.0], help="long mode: training hours"
    )
    parser.add_argument(
        "--crop-seconds", type=float, default=3.0, help="long mode: training crop (the preset's: 3)"
    )
    parser.add_argument(
        "--baseline", default="", help="launch mode: also run this git revision's fold, taking turns"
    )
    parser.add_argument("--repeats", type=int, default=1, help="launch mode: runs of each side")
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between RSS samples")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--tag", default="", help="suffix of the JSON file (e.g. before, after)")
    args = parser.parse_args(argv)
    args.root = args.root.resolve()
    machine = machine_info()
    result = {"launch": launch_mode, "stack": stack_mode, "long": long_mode, "imports": imports_mode}[
        args.mode
    ](args)
    machine["load_average_end"] = load_average()
    passed = ("SER_AUDIO_CACHE_DIR", "SER_AUDIO_CACHE_BYTES", "SER_NPROC_PER_NODE", "SER_MEMORY_CACHE_BYTES")
    env = {k: v for k, v in os.environ.items() if k in passed or k.startswith(("MALLOC_", "OMP_"))}
    payload = {
        "mode": args.mode,
        "args": {k: str(v) for k, v in vars(args).items()},
        "env": env,
        "machine": machine,
        **(result if isinstance(result, dict) else {}),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"fold_memory-{args.mode}{'-' + args.tag if args.tag else ''}.json"
    (args.out / name).write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\nwrote {args.out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
