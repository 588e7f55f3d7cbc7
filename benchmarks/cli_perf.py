"""The `ser` command as a user times it: whole processes, start-up and imports included.

`bench_commands` runs, in alternation (`common.interleaved_medians`), each as a fresh process:

* a bare soundfile loop: ``python -c`` reading every file of the set with ``soundfile.read``;
* ``ser ingest ravdess ROOT --out DIR --no-progress`` with ``--workers 1`` and with all cores;
* ``ser --help``.

and returns two ratios (ingest over the bare loop, target <= 2; all cores over one worker, target
<= 1) and the wall time of ``ser --help`` (target <= 1 s). The `ser` run is the console script
beside this interpreter when it exists (else ``python -m flows.cli``), with this repository first
on PYTHONPATH, so the code measured is the code checked out here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import Side, interleaved_medians, ratio_entry
from ser_stack.settings import SHARED_RAVDESS

REPO = Path(__file__).resolve().parents[1]
INGEST_OVER_BARE_TARGET = 2.0
WORKERS_TARGET = 1.0
HELP_TARGET_S = 1.0
BARE_LOOP = "import sys, soundfile as sf\nfor path in open(sys.argv[1]).read().splitlines():\n    sf.read(path, dtype='float32')\n"


def ser_command() -> list[str]:
    """The `ser` console script of this interpreter's environment, or ``python -m flows.cli``."""
    script = Path(sys.executable).parent / "ser"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "flows.cli"]


def corpus_copy(root: Path, paths: list[str], scratch: Path) -> Path:
    """A copy of just the files `paths` of `root` under `scratch`: `ser ingest` takes a root, so a
    subset of files must be a root of its own (a symlink leaving its root would be refused)."""
    copy = scratch / "corpus"
    for rel in paths:
        (copy / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / rel, copy / rel)
    return copy


def bench_commands(
    root: Path, paths: list[str], all_files: bool, workers: int, repeats: int, warmup: int
) -> dict[str, Any]:
    """Time the bare loop, `ser ingest` at 1 and `workers` workers, and `ser --help` (see the module doc)."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    ser = ser_command()
    with tempfile.TemporaryDirectory(prefix="ser-bench-cli-") as tmp:
        scratch = Path(tmp)
        corpus = root if all_files else corpus_copy(root, paths, scratch)
        listing = scratch / "files.txt"
        listing.write_text("\n".join(str(corpus / rel) for rel in paths) + "\n", encoding="utf-8")

        def run(argv: list[str]) -> None:
            subprocess.run(
                argv, check=True, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )

        counts = sorted({1, workers})
        fns = {"bare_loop": lambda: run([sys.executable, "-c", BARE_LOOP, str(listing)])}
        fns.update(
            {
                f"ser_ingest_{w}": (
                    lambda w=w: run(
                        [
                            *ser,
                            "ingest",
                            "ravdess",
                            str(corpus),
                            "--out",
                            str(scratch / f"out-{w}"),
                            "--no-progress",
                            "--workers",
                            str(w),
                        ]
                    )
                )
                for w in counts
            }
        )
        fns["ser_help"] = lambda: run([*ser, "--help"])
        timings = interleaved_medians(fns, repeats=repeats, warmup=warmup)
    bare = timings["bare_loop"]["median_s"]
    ratios = [
        ratio_entry(
            f"ser ingest command, {w} worker(s) / bare soundfile loop",
            Side(
                f"`ser ingest ravdess ROOT --workers {w}`, whole process",
                timings[f"ser_ingest_{w}"]["median_s"],
                "s",
            ),
            Side("`python -c` soundfile.read loop over the same files, whole process", bare, "s"),
            target=INGEST_OVER_BARE_TARGET,
            at_most=True,
            note=f"{len(paths)} files; both sides are fresh processes (interpreter start and imports count), run in alternation",
        )
        for w in counts
    ]
    if workers > 1:
        ratios.append(
            ratio_entry(
                f"ser ingest command, {workers} workers / 1 worker",
                Side(f"`ser ingest --workers {workers}`", timings[f"ser_ingest_{workers}"]["median_s"], "s"),
                Side("`ser ingest --workers 1`", timings["ser_ingest_1"]["median_s"], "s"),
                target=WORKERS_TARGET,
                at_most=True,
                note="more decoding threads must never be slower than one",
            )
        )
    help_s = timings["ser_help"]["median_s"]
    return {
        "files": len(paths),
        "command": ser,
        "timings": timings,
        "ratios": ratios,
        "help": {"median_s": help_s, "target_s": HELP_TARGET_S, "met": help_s <= HELP_TARGET_S},
    }


def main(argv: list[str] | None = None) -> int:
    """Run `bench_commands` alone over every file of a RAVDESS root; write cli_perf.{json,md}."""
    import argparse
    import json

    from benchmarks.common import machine_info, machine_markdown, ratios_markdown, usable_cores

    parser = argparse.ArgumentParser(description="`ser ingest` and `ser --help` as a user times them")
    parser.add_argument("--root", type=Path, default=SHARED_RAVDESS)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "cli")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    paths = sorted(
        str(p.relative_to(args.root)) for p in args.root.rglob("*") if p.suffix in (".wav", ".flac")
    )
    result = {
        "machine": machine_info(),
        **bench_commands(args.root, paths, True, usable_cores(), args.repeats, warmup=1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cli_perf.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# `ser` as a user times it",
        "",
        *machine_markdown(result["machine"]),
        "",
        *ratios_markdown(result["ratios"]),
        "",
        f"`ser --help`: {result['help']['median_s']:.2f} s (target ≤ {HELP_TARGET_S:.0f} s)",
        "",
    ]
    (args.out / "cli_perf.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
