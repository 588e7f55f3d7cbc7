"""Time to a release model: the wall and CPU minutes of the command a user runs for RAVDESS.

    python benchmarks/release_time.py [--root ../shared/data/ravdess] [--preset NAME|FILE] [--threads 2] [--set K=V ...]

Runs `ser train --corpus ravdess --root ROOT --fold -1 --preset PRESET [--set K=V ...]` (the release
model: every actor but fold 0's validation actors trains, those select the checkpoint; with
`train.release_holdout=false` every actor trains and the last epoch ships) in a subprocess, with
`--threads` torch threads, and writes `benchmarks/results/release/release_time.{json,md}`: wall
minutes, CPU minutes of the child (user + system), the load average before and after (other work on
the machine lengthens the wall time), the selected epoch and the validation UA it printed (none
without held-out actors).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info  # noqa: E402

from ser_model.allocator import heap_policy  # noqa: E402
from ser_model.launch import RESULT_FILE  # noqa: E402
from ser_model.presets import DEFAULT_PRESET  # noqa: E402
from ser_stack.settings import SHARED_RAVDESS

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=str(SHARED_RAVDESS))
    parser.add_argument("--preset", default=DEFAULT_PRESET, help=f"the recipe (default {DEFAULT_PRESET})")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "release"))
    args = parser.parse_args(argv)
    out = Path(args.out)
    run_dir = out / "run"
    command = [
        sys.executable,
        "-m",
        "ser_model.cli",
        "train",
        "--corpus",
        "ravdess",
        "--root",
        args.root,
        "--fold",
        "-1",
        "--preset",
        args.preset,
        "--out",
        str(run_dir),
        "--no-resume",
        *(part for override in args.set for part in ("--set", override)),
    ]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    machine = machine_info()
    started = time.perf_counter()
    completed = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    if completed.returncode != 0:
        print(completed.stderr[-3000:], file=sys.stderr)
        return completed.returncode
    result = json.loads((run_dir / RESULT_FILE).read_text())
    record = {
        "command": " ".join(command[1:]),
        "threads": args.threads,
        "wall_minutes": round(wall / 60, 2),
        "cpu_minutes": round((usage.ru_utime + usage.ru_stime) / 60, 2),
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "machine": machine,
        "heap": heap_policy(),
        "selected_epoch": result["selected_epoch"],
        "valid_UA": result["valid"].get("UA"),  # none when the release trains on every speaker
        "selection_rule": result["selection_rule"],
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "release_time.json").write_text(json.dumps(record, indent=2) + "\n")
    text = (
        f"`ser {record['command'].split(' ', 2)[-1]}` with {args.threads} torch threads: "
        f"{record['wall_minutes']} min wall, {record['cpu_minutes']} CPU min (SER_HEAP={record['heap']}); "
        f"selected epoch {record['selected_epoch']}"
        + (f", validation UA {100 * record['valid_UA']:.1f} %" if record["valid_UA"] is not None else "")
        + f" ({record['selection_rule']}). "
        f"Machine: {machine['cpu_model']}, {machine['usable_cores']} cores, load {machine['load_average_start']} at the start, "
        f"{record['load_average_end']} at the end.\n"
    )
    (out / "release_time.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
