"""Long recordings in segments, measured on recordings with a known truth (issue 21).

    python benchmarks/segments.py --model runs/ravdess/fold-0/best [--root ../shared/data/ravdess] [--fold 0]
                                  [--per-recording 8] [--gap-s 1.5] [--hour-minutes 60] [--threads 2]
                                  [--out benchmarks/results/segments]

1. Accuracy and boundaries: the test actors of `--fold` (held out from the model's training) are
   joined, 8 utterances per recording in a seeded shuffle, with 1.5 s gaps of digital silence, and
   again with gaps of white noise 35 dB under the speech (`ser_model.joined`). Each recording goes
   through the segment pipeline (`ser_model.segments`, default settings); the same utterances are
   scored one by one. Reported: segment-level UA weighted by duration against the per-utterance UA
   of the same utterances (counted and duration-weighted), the median boundary error, segments per
   recording, and the share of utterances whose middle lies in exactly one segment.
2. Speed and memory: the joined recordings are repeated into a `--hour-minutes` FLAC file, and
   `ser predict FILE --segments --csv` runs on it as a user runs it, under `/usr/bin/time -v`, with
   `--threads` torch threads; the same command on a 10 s file gives the process's own footprint
   (interpreter, torch, the model). Reported: wall time, real-time factor (wall / audio seconds,
   start-up included), peak RSS and peak RSS above the 10 s run.

Writes `segments.json` and `segments.md` in `--out`. Figures, not assertions (benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info  # noqa: E402

from ser_stack.settings import SHARED_RAVDESS  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TARGETS = {"ua_gap_points": 3.0, "median_boundary_error_s": 0.3, "rtf": 0.05, "memory_above_model_mb": 500.0}


def timed_command(command: list[str], threads: int) -> dict[str, float]:
    """Run `command` under /usr/bin/time -v; its wall seconds and peak RSS (MiB)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        ["/usr/bin/time", "-v", *command], env=env, cwd=REPO, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}: {done.stderr[-2000:]}")
    wall = re.search(
        r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (?:(\d+):)?(\d+):([\d.]+)", done.stderr
    )
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    hours, minutes, seconds = (float(g) if g else 0.0 for g in wall.groups())
    return {
        "wall_s": hours * 3600 + minutes * 60 + seconds,
        "peak_rss_mb": int(rss.group(1)) / 1024,
        "output_lines": done.stdout.count("\n"),
    }


def test_items(root: str, fold: int, labels: tuple[str, ...]) -> list[tuple[str, int, str]]:
    """(path, class index, utt_id) of the fold's test utterances."""
    from data_contracts.ingest import run_ingest
    from ser_model.train import training_splits

    ingested = run_ingest("ravdess", root, progress=False)
    rows = training_splits(ingested.manifest, ingested.folds, fold)["test"]
    return [(str(Path(root) / r.path), labels.index(r.label), r.utt_id) for r in rows.itertuples()]


def markdown(report: dict) -> str:
    lines = [
        "# Long recordings in segments (benchmarks/segments.py)",
        "",
        f"Model `{report['model']}`; fold {report['fold']} test actors {report['speakers']}; "
        f"{report['per_recording']} utterances per recording, {report['gap_s']} s gaps; default `SegmentConfig`.",
        "",
        "| gaps | recordings | utterances | segment UA (duration-weighted) | per-utterance UA, duration-weighted | "
        "per-utterance UA, counted | gap (points) | median boundary error | p90 | segments per recording | "
        "middles in one segment | speech missed |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for gap, r in report["accuracy"].items():
        seg, dur, utt = r["segment"]["UA"], r["utterance_duration_weighted"]["UA"], r["utterance"]["UA"]
        spr = r["segments_per_recording"]
        lines.append(
            f"| {gap} | {r['recordings']} | {r['utterances']} | {100 * seg:.1f} % | {100 * dur:.1f} % | {100 * utt:.1f} % | "
            f"{100 * (seg - dur):+.1f} | {r['boundary_error_s']['median']:.3f} s | {r['boundary_error_s']['p90']:.3f} s | "
            f"{spr['mean']:.1f} ({spr['min']}–{spr['max']}) | {100 * r['middles_in_one_segment']:.1f} % | "
            f"{100 * r['missed_speech_share']:.1f} % |"
        )
    speed = report.get("speed")
    if speed:
        lines += [
            "",
            f"Speed and memory: `ser predict FILE --segments --csv`, {speed['threads']} torch threads, "
            f"load average {speed['load_before']} before, {speed['load_after']} after.",
            "",
            "| file | audio | wall | real-time factor | peak RSS | peak RSS above the 10 s run |",
            "|---|---|---|---|---|---|",
            f"| 10 s | 10 s | {speed['short']['wall_s']:.1f} s | — | {speed['short']['peak_rss_mb']:.0f} MiB | — |",
            f"| {speed['hour_s'] / 60:.0f} min | {speed['hour_s']:.0f} s | {speed['hour']['wall_s']:.1f} s | {speed['rtf']:.4f} | "
            f"{speed['hour']['peak_rss_mb']:.0f} MiB | {speed['memory_above_model_mb']:.0f} MiB |",
        ]
    lines += ["", f"Targets: {json.dumps(TARGETS)}", "", f"Machine: {json.dumps(report['machine'])}", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", required=True, help="checkpoint folder of a model trained without the fold's test actors"
    )
    parser.add_argument("--root", default=str(SHARED_RAVDESS))
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--per-recording", type=int, default=8)
    parser.add_argument("--gap-s", type=float, default=1.5)
    parser.add_argument("--hour-minutes", type=float, default=60.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "segments"))
    args = parser.parse_args(argv)

    import torch

    from ser_model.inference import Predictor
    from ser_model.joined import GAP_KINDS, build_joined, score_joined
    from ser_model.segments import SegmentConfig

    torch.set_num_threads(args.threads)
    predictor = Predictor.from_pretrained(args.model)
    items = test_items(args.root, args.fold, predictor.labels)
    config = SegmentConfig()
    report = {
        "model": args.model,
        "fold": args.fold,
        "per_recording": args.per_recording,
        "gap_s": args.gap_s,
        "speakers": sorted({Path(p).parent.name for p, _, _ in items}),
        "segment_config": config.to_dict(),
        "machine": machine_info(),
        "accuracy": {},
    }
    recordings = {}
    for gap in GAP_KINDS:
        recordings[gap] = build_joined(
            items, predictor.sample_rate, per_recording=args.per_recording, gap_s=args.gap_s, gap=gap
        )
        report["accuracy"][gap] = score_joined(recordings[gap], predictor, predictor.probabilities, config)
        r = report["accuracy"][gap]
        print(
            f"{gap}: segment UA {r['segment']['UA']:.4f}, per-utterance UA {r['utterance']['UA']:.4f} "
            f"(duration-weighted {r['utterance_duration_weighted']['UA']:.4f}), median boundary error "
            f"{r['boundary_error_s']['median']:.3f} s, segments/recording {r['segments_per_recording']}",
            flush=True,
        )
    write_report(report, Path(args.out))  # the accuracy figures stand alone if the speed run is cut short
    if not args.skip_speed:
        with tempfile.TemporaryDirectory(prefix="ser-segments-") as scratch:
            joined = np.concatenate([r.samples for gap in GAP_KINDS for r in recordings[gap]])
            repeats = int(np.ceil(args.hour_minutes * 60 * predictor.sample_rate / len(joined)))
            hour = np.tile(joined, repeats)[: int(args.hour_minutes * 60 * predictor.sample_rate)]
            hour_path, short_path = Path(scratch) / "hour.flac", Path(scratch) / "short.flac"
            soundfile.write(hour_path, hour, predictor.sample_rate)
            soundfile.write(short_path, hour[: 10 * predictor.sample_rate], predictor.sample_rate)
            del hour, joined
            ser = [sys.executable, "-m", "flows.cli", "predict", "--segments", "--csv", "--model", args.model]
            load_before = [round(x, 2) for x in os.getloadavg()]
            short = timed_command([*ser, str(short_path)], args.threads)
            full = timed_command([*ser, str(hour_path)], args.threads)
            hour_s = args.hour_minutes * 60
            report["speed"] = {
                "threads": args.threads,
                "hour_s": hour_s,
                "short": short,
                "hour": full,
                "rtf": full["wall_s"] / hour_s,
                "memory_above_model_mb": full["peak_rss_mb"] - short["peak_rss_mb"],
                "load_before": load_before,
                "load_after": [round(x, 2) for x in os.getloadavg()],
            }
            print(f"speed: {report['speed']}", flush=True)
        write_report(report, Path(args.out))
    return 0


def write_report(report: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "segments.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (out / "segments.md").write_text(markdown(report), encoding="utf-8")
    print(f"wrote {out / 'segments.json'}, {out / 'segments.md'}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
