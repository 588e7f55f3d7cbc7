"""Seed ensembles of the accuracy grid's fold models: what averaging the class probabilities of one
fold's models trained with different seeds gives on that fold's test actors, and what it costs.

    python benchmarks/ensemble.py [--grid benchmarks/results/accuracy] [--variants full,with_mll] [--threads 2]

For every variant and fold of the grid (benchmarks/accuracy.py) whose runs of two or more seeds kept
their `best/` folder (git-ignored: only on the machine that trained them), each seed's model scores
the fold's test actors through `ser_model.inference.Predictor` (the path of `ser predict` and the
served model), and so does the mean of their probabilities,

    p_ens(c | x) = (1/S) Σ_s p_s(c | x).

Each single model's confusion matrix is checked against the one its result.json recorded (the
evaluation of `fit`), so the figures are the grid's. Writes `--out` (default
benchmarks/results/ensemble) `ensemble.{json,md}`: per (variant, fold) each seed's test UA, their
mean, the ensemble's, and the seconds one model and the ensemble took over the same utterances
(measured in this run, one after the other); per variant the paired gain ensemble − mean single over
folds (± standard error). The models were selected on validation actors when they trained; nothing
here is chosen on test actors, and the ensemble has no weight of its own to tune.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data_contracts.ingest import run_ingest
from ser_model.audio import load_audio
from ser_model.data import audio_files
from ser_model.inference import Predictor
from ser_model.launch import BEST_FOLDER, RESULT_FILE
from ser_model.metrics import classification_metrics, mean_and_std
from ser_model.model import SERModel
from ser_model.train import training_splits
from ser_stack.settings import SHARED_RAVDESS

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import VARIANTS  # noqa: E402
from common import cpu_model, usable_cores  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def ensemble_metrics(
    probabilities: list[np.ndarray], y_true: np.ndarray, labels: tuple[str, ...]
) -> dict[str, Any]:
    """Each model's metrics (argmax of its probabilities) and the ensemble's (argmax of their mean).

    probabilities: one (N, C) array per model, rows in the order of ``y_true`` (N,) class indices."""
    if len(probabilities) < 2:
        raise ValueError(f"an ensemble needs at least two models, got {len(probabilities)}")
    shapes = {p.shape for p in probabilities}
    if len(shapes) != 1 or next(iter(shapes)) != (len(y_true), len(labels)):
        raise ValueError(
            f"probabilities of shapes {sorted(shapes)}; expected ({len(y_true)}, {len(labels)}) each"
        )
    singles = [classification_metrics(y_true, p.argmax(axis=1), len(labels), labels) for p in probabilities]
    mean = np.mean(np.stack(probabilities), axis=0)
    return {
        "singles": singles,
        "ensemble": classification_metrics(y_true, mean.argmax(axis=1), len(labels), labels),
    }


def fold_runs(grid: Path, variant: str) -> dict[int, dict[int, Path]]:
    """{fold: {seed: run folder}} of the variant's finished runs that kept their best/ folder."""
    found: dict[int, dict[int, Path]] = {}
    for result in sorted((grid / variant).glob(f"seed-*/fold-*/{RESULT_FILE}")):
        run = result.parent
        if not (run / BEST_FOLDER).is_dir():
            continue
        seed, fold = int(run.parent.name.split("-")[1]), int(run.name.split("-")[1])
        found.setdefault(fold, {})[seed] = run
    return found


def score_fold(runs: dict[int, Path], rows, waves: list[np.ndarray]) -> dict[str, Any]:
    """The fold's seeds scored one by one on ``waves`` (its test rows), then as an ensemble."""
    probabilities, seconds, recorded = [], [], []
    speakers = rows["speaker"].astype(str).tolist()
    y_true = None
    for _, run in sorted(runs.items()):
        predictor = Predictor(SERModel.from_pretrained(run / BEST_FOLDER), batch_size=16)
        if y_true is None:
            index = {label: i for i, label in enumerate(predictor.labels)}
            y_true = np.array([index[label] for label in rows["label"]], dtype=np.int64)
        started = time.perf_counter()
        probabilities.append(predictor.probabilities(waves, speakers if predictor.uses_speakers else None))
        seconds.append(time.perf_counter() - started)
        recorded.append(json.loads((run / RESULT_FILE).read_text())["test"]["confusion"])
    scores = ensemble_metrics(probabilities, y_true, predictor.labels)
    reproduced = [m["confusion"] == r for m, r in zip(scores["singles"], recorded)]
    singles = [100.0 * m["UA"] for m in scores["singles"]]
    return {
        "seeds": sorted(runs),
        "single_UA": singles,
        "mean_single_UA": float(np.mean(singles)),
        "ensemble_UA": 100.0 * scores["ensemble"]["UA"],
        "ensemble_recall": scores["ensemble"]["per_class_recall"],
        "reproduces_result_json": reproduced,
        "seconds_per_model": seconds,
        "seconds_ensemble": float(sum(seconds)),
        "n": int(len(rows)),
    }


def summary_markdown(report: dict[str, Any]) -> str:
    lines = [
        "Seed ensembles of the accuracy grid's fold models on each fold's test actors "
        f"(grid {report['grid']}; Predictor, {report['threads']} torch threads; {report['machine']}).",
        "",
        "| variant | fold | seeds | test UA % per seed | mean single | ensemble | ensemble − mean | s per model | s ensemble | reproduces result.json |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for variant, folds in report["variants"].items():
        for fold, row in folds["folds"].items():
            lines.append(
                f"| {variant} | {fold} | {','.join(map(str, row['seeds']))} | "
                f"{', '.join(f'{u:.1f}' for u in row['single_UA'])} | {row['mean_single_UA']:.1f} | "
                f"{row['ensemble_UA']:.1f} | {row['ensemble_UA'] - row['mean_single_UA']:+.1f} | "
                f"{np.mean(row['seconds_per_model']):.1f} | {row['seconds_ensemble']:.1f} | "
                f"{'yes' if all(row['reproduces_result_json']) else 'NO'} |"
            )
    lines += [
        "",
        "| variant | folds | mean single UA % | ensemble UA % | gain (paired ± s.e.) |",
        "|---|---|---|---|---|",
    ]
    for variant, folds in report["variants"].items():
        gain = folds["gain"]
        se = f" ± {gain['se']:.1f}" if gain["se"] is not None else ""
        lines.append(
            f"| {variant} | {gain['n']} | {folds['mean_single_UA']:.1f} | {folds['ensemble_UA']:.1f} | "
            f"{gain['mean']:+.1f}{se} |"
        )
    return "\n".join(lines) + "\n"


def variant_summary(folds: dict[int, dict[str, Any]]) -> dict[str, Any]:
    gains = [row["ensemble_UA"] - row["mean_single_UA"] for row in folds.values()]
    mean, sd = mean_and_std(gains)
    return {
        "folds": folds,
        "mean_single_UA": float(np.mean([row["mean_single_UA"] for row in folds.values()])),
        "ensemble_UA": float(np.mean([row["ensemble_UA"] for row in folds.values()])),
        "gain": {"n": len(gains), "mean": mean, "se": sd / math.sqrt(len(gains)) if len(gains) > 1 else None},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=str(SHARED_RAVDESS), help="RAVDESS root (official layout)")
    parser.add_argument("--grid", default=str(REPO / "benchmarks" / "results" / "accuracy"))
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "ensemble"))
    parser.add_argument("--variants", default=",".join(v for v, o in VARIANTS.items() if o is not None))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    grid, root = Path(args.grid), Path(args.root)
    ingest = run_ingest("ravdess", root, progress=False)
    report: dict[str, Any] = {
        "grid": str(grid.relative_to(REPO) if grid.is_relative_to(REPO) else grid),
        "threads": args.threads,
        "machine": f"{cpu_model()}, {usable_cores()} usable cores",
        "variants": {},
    }
    waves_of: dict[int, list[np.ndarray]] = {}
    for variant in (v.strip() for v in args.variants.split(",") if v.strip()):
        if VARIANTS.get(variant, None) is None:
            print(f"error: {variant!r} is not a method variant of benchmarks/accuracy.py", file=sys.stderr)
            return 2
        folds = {}
        for fold, runs in sorted(fold_runs(grid, variant).items()):
            if len(runs) < 2:
                continue
            rows = training_splits(ingest.manifest, ingest.folds, fold)["test"]
            if fold not in waves_of:
                files = audio_files(
                    root, rows["path"].astype(str).tolist(), rows["utt_id"].astype(str).tolist()
                )
                waves_of[fold] = [load_audio(f, 16000) for f in files]
            folds[fold] = score_fold(runs, rows, waves_of[fold])
            print(
                f"{variant} fold {fold}: {folds[fold]['single_UA']} → ensemble {folds[fold]['ensemble_UA']:.1f}"
            )
        if folds:
            report["variants"][variant] = variant_summary(folds)
    if not report["variants"]:
        print(
            f"error: no fold of {grid} has two seeds with a best/ folder; run benchmarks/accuracy.py first",
            file=sys.stderr,
        )
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ensemble.json").write_text(json.dumps(report, indent=2) + "\n")
    text = summary_markdown(report)
    (out / "ensemble.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
