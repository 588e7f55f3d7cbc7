"""Fine-tuning a small dataset from a champion (issue 34 item 3): test UA from scratch against from
the champion, same recipe and schedule, on the same folds and seeds, measured in one run.

    OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/fine_tuning.py --work /tmp/ft
    python benchmarks/fine_tuning.py --work /tmp/ft --summarise-only

Data, from shared RAVDESS (official layout, read once and copied under each table's folder, as a
user's table holds its audio):

    champion  a table dataset ``rav-champ`` of actors 01–12 with RAVDESS's labels; the champion is its
              release model (`ser train --fold -1`, the `cpu-fbank` preset, one model: trained on all
              12 actors for the preset's fixed schedule, no epoch selected)
    small     a table dataset ``rav-small`` of actors 13–20 (never seen by the champion), labels and
              speakers renamed (``joy``, ``sadness``, … ; ``person-1`` …): the same 8 emotions in
              other words, so the head is new and only the backbone and FLAM carry over

Each run trains the small dataset's fold k (its own speaker folds: 2 test, 2 validation and 4
training actors) with the `cpu-fbank` preset and seed s, from scratch or with ``--init`` the
champion; the epoch is selected on the fold's validation actors and the test actors are scored once.
Runs go one after another (fold, then seed, then start), each skipped when its result.json exists
(a stopped run resumes from its checkpoint).

Prints per start: test UA per (fold, seed), mean ± sample sd; and the paired difference champion −
scratch over the (fold, seed) pairs both finished, its standard error and in how many pairs the
champion is ahead. Writes ``<work>/fine_tuning.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ser_model.metrics import mean_and_std
from ser_stack.settings import SHARED_RAVDESS

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import paired_difference, paired_text  # noqa: E402

EMOTIONS = {
    "01": "neutral",
    "02": "calm",
    "03": "happy",
    "04": "sad",
    "05": "angry",
    "06": "fearful",
    "07": "disgust",
    "08": "surprised",
}
"""RAVDESS's emotion codes (the third field of a file name) and its labels."""
RENAMED = {
    "neutral": "neutral-tone",
    "calm": "calmness",
    "happy": "joy",
    "sad": "sadness",
    "angry": "anger",
    "fearful": "fear",
    "disgust": "disgusted",
    "surprised": "surprise",
}
"""The small dataset's words for the same emotions."""
CHAMPION_ACTORS = range(1, 13)
SMALL_ACTORS = range(13, 21)
STARTS = ("scratch", "champion")


def write_table(src: Path, folder: Path, actors: range, renamed: bool) -> Path:
    """A labels table of ``actors`` under ``folder`` (audio copied to ``audio/<speaker>/<label>/``),
    RAVDESS's labels and ``spkNN`` speakers, or the renamed labels and ``person-N`` speakers."""
    rows = []
    for actor in actors:
        files = sorted((src / f"Actor_{actor:02d}").glob("03-*.*"))
        if not files:
            raise FileNotFoundError(f"no RAVDESS audio under {src / f'Actor_{actor:02d}'}; pass --root DIR")
        for file in files:
            label = EMOTIONS[file.name.split("-")[2]]
            label = RENAMED[label] if renamed else label
            speaker = f"person-{actor - SMALL_ACTORS.start + 1}" if renamed else f"spk{actor:02d}"
            relative = Path("audio") / speaker / label / file.name
            (folder / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(file, folder / relative)
            rows.append({"path": relative.as_posix(), "label": label, "speaker": speaker})
    with (folder / "labels.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, ["path", "label", "speaker"])
        writer.writeheader()
        writer.writerows(rows)
    return folder / "labels.csv"


def ser(*args: str, log: Path) -> None:
    """Run the ``ser`` console script of this interpreter's environment, its output in ``log``;
    a failure raises naming the log."""
    command = [str(Path(sys.executable).with_name("ser")), *args]
    with log.open("w") as handle:
        done = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}; see {log}")


def prepared(work: Path, root: Path) -> None:
    """The two tables and their ingests under ``work`` (each skipped when already there)."""
    for name, actors, renamed, dataset in (
        ("champ", CHAMPION_ACTORS, False, "rav-champ"),
        ("small", SMALL_ACTORS, True, "rav-small"),
    ):
        table = work / name / "labels.csv"
        if not table.exists():
            write_table(root, work / name, actors, renamed)
        if not (work / "out" / name / "report.json").exists():
            (work / "out").mkdir(exist_ok=True)
            ser(
                "ingest",
                "table",
                str(table),
                "--name",
                dataset,
                "--out",
                str(work / "out" / name),
                "--workers",
                "1",
                "--no-progress",
                log=work / "out" / f"{name}.log",
            )


def run_name(fold: int, start: str, seed: int) -> str:
    return f"small-f{fold}-{start}-s{seed}"


def train_all(work: Path, runs: Path, folds: list[int], seeds: list[int]) -> None:
    """The champion, then every (fold, seed, start) run not yet finished, one after another."""
    runs.mkdir(parents=True, exist_ok=True)
    champion = runs / "champion"
    if not (champion / "result.json").exists():
        ser(
            "train",
            "--manifest",
            str(work / "out" / "champ"),
            "--fold",
            "-1",
            "--set",
            "train.release_seeds=1",
            "--out",
            str(champion),
            log=runs / "champion.log",
        )
    for fold in folds:
        for seed in seeds:
            for start in STARTS:
                out = runs / run_name(fold, start, seed)
                if (out / "result.json").exists():
                    continue
                init = ["--init", str(champion / "best")] if start == "champion" else []
                began = time.monotonic()
                ser(
                    "train",
                    "--manifest",
                    str(work / "out" / "small"),
                    "--fold",
                    str(fold),
                    "--preset",
                    "cpu-fbank",
                    "--set",
                    f"train.seed={seed}",
                    *init,
                    "--out",
                    str(out),
                    log=runs / f"{out.name}.log",
                )
                print(f"{out.name}: {time.monotonic() - began:.0f} s", flush=True)


def summary(runs: Path, folds: list[int], seeds: list[int]) -> dict[str, Any]:
    """Test UA (percent) per start and (fold, seed) of the finished runs, mean ± sd per start, the
    paired difference champion − scratch, and what the champion runs copied."""
    ua: dict[str, dict[tuple[int, int], float]] = {start: {} for start in STARTS}
    copied = set()
    for start in STARTS:
        for fold in folds:
            for seed in seeds:
                path = runs / run_name(fold, start, seed) / "result.json"
                if path.exists():
                    result = json.loads(path.read_text())
                    ua[start][(fold, seed)] = 100 * result["test"]["UA"]
                    if result.get("init"):
                        copied.add((tuple(result["init"]["copied"]), result["init"]["head"]))
    out: dict[str, Any] = {"starts": {}, "copied": sorted(copied)}
    for start, values in ua.items():
        mean, sd = mean_and_std(list(values.values())) if values else (None, None)
        out["starts"][start] = {
            "runs": {f"f{k}-s{s}": v for (k, s), v in values.items()},
            "mean": mean,
            "sd": sd,
        }
    out["champion_minus_scratch"] = paired_difference(ua["champion"], ua["scratch"])
    return out


def printed(result: dict[str, Any]) -> None:
    for start, row in result["starts"].items():
        runs = ", ".join(f"{key} {value:.1f}" for key, value in row["runs"].items())
        figure = (
            f"{row['mean']:.1f} ± {row['sd']:.1f}"
            if row["mean"] is not None and row["sd"] is not None
            else "-"
        )
        print(f"{start:9s} test UA % {figure}  ({len(row['runs'])} runs: {runs})")
    print(f"champion − scratch, test UA points: {paired_text(result['champion_minus_scratch'])}")
    print(f"copied from the champion: {result['copied']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", required=True, help="folder for the tables, ingests and runs")
    parser.add_argument("--runs", help="folder of the runs (default <work>/runs)")
    parser.add_argument("--root", default=str(SHARED_RAVDESS), help="RAVDESS root (official layout)")
    parser.add_argument("--folds", default="0,1,2,3,4")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--summarise-only", action="store_true", help="only the figures of the finished runs")
    args = parser.parse_args(argv)
    work = Path(args.work)
    runs = Path(args.runs) if args.runs else work / "runs"
    folds, seeds = [int(k) for k in args.folds.split(",")], [int(s) for s in args.seeds.split(",")]
    work.mkdir(parents=True, exist_ok=True)
    if not args.summarise_only:
        prepared(work, Path(args.root))
        train_all(work, runs, folds, seeds)
    result = summary(runs, folds, seeds)
    (work / "fine_tuning.json").write_text(json.dumps(result, indent=2) + "\n")
    printed(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
