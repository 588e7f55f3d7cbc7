"""Speaker-independent accuracy on real RAVDESS: the method, its ablations and a plain reference.

    python benchmarks/accuracy.py --threads 1 --seeds 0,1 &      # start one process per core;
    python benchmarks/accuracy.py --threads 1 --seeds 0,1 &      # they share the grid (claim files)
    python benchmarks/accuracy.py --summarise-only               # tables from whatever has finished

Protocol: the corpus's folds from `data_contracts.folds` (RAVDESS actors 01–20 → 5 folds of 4 test
actors); in every fold the checkpoint is selected on validation actors drawn from that fold's
training actors, and the test actors are evaluated once, never used for selection or tuning. Every
variant runs on the same folds and seeds; the method's variants use the `cpu-fbank` preset
(ser_model/presets.py) with one switch each:

    full           the preset as shipped: FLAM, the KL term alone; EAM and MLL's other terms off
    reference_cnn  the plain log-mel CNN + self-attention of benchmarks/reference_cnn.py (no ser_model model code)
    with_eam       with energy-adaptive mixup (half the samples, SNR U[0, 10] dB): EAM's ablation, reversed
    no_flam        mean pooling instead of the frame-level attention module
    with_mll       the full multi-loss (KL + focal + center + SupCon): MLL's ablation, reversed
    speaker_norm   log-mel normalised by the speaker's statistics, the test speaker's at test time
                   (unlabelled; labelled in the tables, never a default)
    with_pitch     the preset with the pitch branch (``model.pitch``: F0 and periodicity per frame, fused before FLAM)
    distilled      the preset as a student (ser_model.distil) of the fold's two-seed ensemble: the `full`
                   runs of seeds 0 and 1 of that fold in the same --out (their best/), as teacher on the
                   fold's training actors; skipped (not claimed) until both have finished

Layout: `<out>/<variant>/seed-<s>/fold-<k>/` holds `result.json` and `metrics.jsonl` (checkpoints are
git-ignored). A process claims a run by creating `claim` in its folder (holding its pid); a run whose
claimer is gone is taken over (it resumes from its last checkpoint), a finished one is skipped, so any
number of processes can be started and stopped. Order: seed-major, then fold, then variant, so a
stopped grid leaves every variant with about the same (seed, fold) pairs.

Summary (`accuracy.json`, `accuracy.md`, `reliability_<variant>.png`): per variant, mean ± sample std of test WA/UA/macro-F1 over its
(seed, fold) runs; for every other variant, the paired difference full − variant of test UA over the
(seed, fold) pairs both finished, with its standard error sd(d)/sqrt(n) and in how many pairs full is
ahead and behind; each class's test recall, mean over the variant's runs (benchmarks/class_recall.py); the same at the last epoch for runs that recorded it (`test_last_epoch`); for `distilled`, its
teachers' test UA as an ensemble beside the student's and full's (student − ensemble paired); and the calibration figures of
the runs that recorded them (benchmarks/calibration_grid.py: ECE, Brier and NLL before and after, the
pooled reliability diagram and threshold table).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import statistics
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from data_contracts.ingest import run_ingest
from data_contracts.labels import LABELS
from ser_model.cli.arguments import parse_overrides
from ser_model.config_validation import ConfigError
from ser_model.distil import Teacher
from ser_model.ensemble import SEREnsemble
from ser_model.evaluation import evaluate_rows
from ser_model.launch import BAD_CONFIG_EXIT, BEST_FOLDER, METRICS_FILE, RESULT_FILE
from ser_model.metrics import HEADLINE_METRICS, mean_and_std
from ser_model.model import SERModel
from ser_model.presets import DEFAULT_PRESET, experiment_config, preset_settings
from ser_model.train import fit, training_splits
from ser_stack.settings import SHARED_RAVDESS

sys.path.insert(0, str(Path(__file__).resolve().parent))
from calibration_grid import calibration_lines, calibration_summary, write_reliability_figures  # noqa: E402
from class_recall import class_recall, class_recall_lines  # noqa: E402
from common import cpu_model, usable_cores  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PRESET = DEFAULT_PRESET
log = logging.getLogger("accuracy")

#: variant → config overrides on top of the preset; None: the reference model (benchmarks/reference_cnn.py)
VARIANTS: dict[str, dict[str, Any] | None] = {
    "full": {},
    "reference_cnn": None,
    "with_eam": {"eam.enabled": True},
    "no_flam": {"model.flam": False},
    "with_mll": {"loss.focal": True, "loss.center": True, "loss.supcon": True},
    "speaker_norm": {"model.fbank_norm": "speaker"},
    "with_pitch": {"model.pitch": True},
    "distilled": {},
}
"""``cpu-fbank`` trains without EAM and without MLL's focal, center and SupCon terms
(ser_model/presets.py), so their ablations add them (``with_eam``, ``with_mll``).
``speaker_norm`` normalises each utterance by its speaker's statistics, at test time the test
speaker's (unlabelled): reported apart, not a method variant a user gets by default."""
TEST_SPEAKER_STATISTICS = ("speaker_norm",)
"""Variants whose test scores use statistics of the test speakers (labelled so in the table)."""
DISTILLED, TEACHER_VARIANT, TEACHER_SEEDS = "distilled", "full", (0, 1)
"""The student variant, and the runs of the same fold whose ensemble teaches it (``fold_teacher``)."""


def teacher_runs(out: Path, fold: int) -> list[Path] | None:
    """The run folders of fold ``fold``'s teachers (TEACHER_VARIANT, TEACHER_SEEDS) under ``out``;
    None while one of them has not finished (no result.json or no best/)."""
    runs = [out / TEACHER_VARIANT / f"seed-{seed}" / f"fold-{fold}" for seed in TEACHER_SEEDS]
    finished = all((run / RESULT_FILE).is_file() and (run / BEST_FOLDER).is_dir() for run in runs)
    return runs if finished else None


def fold_teacher(runs: list[Path], test_rows: pd.DataFrame, root: Path) -> Teacher:
    """The ensemble of ``runs``' selected models, and what the student's result.json says of it: the
    members' seeds and folders, and the ensemble's own test metrics on the fold's test actors (a record
    beside the student's, scored once; nothing is chosen on them)."""
    ensemble = SEREnsemble([SERModel.from_pretrained(run / BEST_FOLDER) for run in runs])
    test = evaluate_rows(ensemble, test_rows, root, batch_size=4, device="cpu")
    members = [{"seed": seed, "folder": str(run / BEST_FOLDER)} for seed, run in zip(TEACHER_SEEDS, runs)]
    scores = {key: test[key] for key in (*HEADLINE_METRICS, "per_class_recall", "confusion") if key in test}
    return Teacher(
        ensemble, {"teacher": f"{TEACHER_VARIANT} ensemble", "members": members, "teacher_test": scores}
    )


def teacher_comparison(results: dict[str, dict[tuple[int, int], dict[str, Any]]]) -> dict[str, Any] | None:
    """Student against teacher against single model, test UA %: per distilled run its teachers' ensemble's,
    the means over those runs, student − ensemble paired over them; None without a distilled run."""
    runs = {
        k: r for k, r in results.get(DISTILLED, {}).items() if "teacher_test" in r.get("distillation", {})
    }
    if not runs:
        return None
    student = {k: 100.0 * r["test"]["UA"] for k, r in runs.items()}
    ensemble = {k: 100.0 * r["distillation"]["teacher_test"]["UA"] for k, r in runs.items()}
    single = {k: 100.0 * r["test"]["UA"] for k, r in results.get(TEACHER_VARIANT, {}).items() if k in runs}
    return {
        "runs": [list(k) for k in runs],
        "student_UA": statistics.fmean(student.values()),
        "ensemble_UA": statistics.fmean(ensemble.values()),
        "single_UA": statistics.fmean(single.values()) if single else None,
        "student_minus_ensemble_UA": paired_difference(student, ensemble),
        "student_minus_single_UA": paired_difference(student, single),
    }


def collect(out: Path) -> dict[str, dict[tuple[int, int], dict[str, Any]]]:
    """Every finished run under `out`: {variant: {(seed, fold): result.json + training seconds}}.

    Variants come in VARIANTS order, runs in (seed, fold) order; a run without result.json (still
    training, or stopped) is left out. Training seconds are the sum of the epochs' `seconds` in
    metrics.jsonl (training + validation, not the final test evaluation).
    """
    results: dict[str, dict[tuple[int, int], dict[str, Any]]] = {}
    for variant in VARIANTS:
        found = {}
        for done in (out / variant).glob(f"seed-*/fold-*/{RESULT_FILE}"):
            seed = int(done.parent.parent.name.split("-")[1])
            result = json.loads(done.read_text())
            metrics = done.parent / METRICS_FILE
            epochs = (
                [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
                if metrics.exists()
                else []
            )
            result["train_seconds"] = sum(epoch["seconds"] for epoch in epochs)
            found[(seed, int(result["fold"]))] = result
        if found:
            results[variant] = dict(sorted(found.items()))
    return results


def paired_difference(a: dict[tuple[int, int], float], b: dict[tuple[int, int], float]) -> dict[str, Any]:
    """d = a − b over the keys both hold: mean, standard error sd(d)/sqrt(n) (sample sd; None for n < 2), n,
    and in how many pairs a is ahead (d > 0) and behind (d < 0); the rest are level."""
    keys = sorted(set(a) & set(b))
    d = [a[k] - b[k] for k in keys]
    if not d:
        return {"n": 0, "mean": None, "se": None, "ahead": 0, "behind": 0}
    mean, sd = mean_and_std(d)
    se = sd / math.sqrt(len(d)) if len(d) > 1 else None
    return {
        "n": len(d),
        "mean": mean,
        "se": se,
        "ahead": sum(x > 0 for x in d),
        "behind": sum(x < 0 for x in d),
        "pairs": [list(k) for k in keys],
    }


def paired_text(diff: dict[str, Any]) -> str:
    """A paired difference as the tables print it: ``+3.3 ± 0.9 (n=10, 9 ahead, 1 behind)``."""
    if diff["n"] == 0:
        return "no common run"
    se = f" ± {diff['se']:.1f}" if diff["se"] is not None else ""
    return f"{diff['mean']:+.1f}{se} (n={diff['n']}, {diff['ahead']} ahead, {diff['behind']} behind)"


def summarise(results: dict[str, dict[tuple[int, int], dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per variant: mean ± sample std (ser_model.metrics.mean_and_std) over its runs of each test metric (percent), the per-run
    values, validation UA of the selected epochs, training seconds, and (for variants other than
    full) the paired difference full − variant of test UA; for runs that recorded their last
    epoch's test UA, selected − last, the seeds' spread, and full − variant at the last epoch."""
    summary: dict[str, dict[str, Any]] = {}
    test_ua = {v: {k: 100.0 * r["test"]["UA"] for k, r in runs.items()} for v, runs in results.items()}
    last_ua = {
        v: {k: 100.0 * r["test_last_epoch"]["UA"] for k, r in runs.items() if r.get("test_last_epoch")}
        for v, runs in results.items()
    }
    for variant, runs in results.items():
        keys = list(runs)
        row: dict[str, Any] = {"runs": [list(k) for k in keys]}
        for metric in HEADLINE_METRICS:
            values = [100.0 * runs[k]["test"][metric] for k in keys]
            mean, std = mean_and_std(values)
            row[metric] = {"mean": mean, "std": std, "per_run": values}
        row["valid_UA_per_run"] = [100.0 * runs[k]["valid"]["UA"] for k in keys]
        row["selected_epoch_per_run"] = [runs[k]["selected_epoch"] for k in keys]
        row["epochs"] = sorted({runs[k]["epochs"] for k in keys})
        row["train_seconds_per_run"] = [round(runs[k]["train_seconds"], 1) for k in keys]
        row["per_class_recall"] = class_recall(runs[k]["test"] for k in keys)
        calibrated = [runs[k]["calibration"] for k in keys if "ECE_after" in runs[k].get("calibration", {})]
        if calibrated:
            row["calibration"] = calibration_summary(calibrated)
        if variant != "full" and "full" in test_ua:
            row["full_minus_this_UA"] = paired_difference(test_ua["full"], test_ua[variant])
        last = last_ua[variant]
        if last:
            row["last_epoch"] = {
                "UA_per_run": [last.get(k) for k in keys],
                "selected_minus_last_UA": paired_difference(test_ua[variant], last),
                "seed_spread_selected": seed_spread({k: test_ua[variant][k] for k in last}),
                "seed_spread_last": seed_spread(last),
            }
            if variant != "full" and last_ua.get("full"):
                row["last_epoch"]["full_minus_this_UA"] = paired_difference(last_ua["full"], last)
        summary[variant] = row
    comparison = teacher_comparison(results)
    if comparison is not None:
        summary[DISTILLED]["against_teacher"] = comparison
    return summary


def seed_spread(ua: dict[tuple[int, int], float]) -> dict[str, Any]:
    """How far apart the seeds of one fold land: the mean over folds run with 2 or more seeds of
    max − min test UA across those seeds, and that number of folds (mean None without one)."""
    by_fold: dict[int, list[float]] = {}
    for (_, fold), value in ua.items():
        by_fold.setdefault(fold, []).append(value)
    spreads = [max(v) - min(v) for v in by_fold.values() if len(v) > 1]
    return {"mean": statistics.fmean(spreads) if spreads else None, "folds": len(spreads)}


def markdown(summary: dict[str, dict[str, Any]], meta: dict[str, Any]) -> str:
    """The tables: per variant test WA/UA/macro-F1 mean ± std over its runs and minutes per run; the
    paired differences against full; test UA per (seed, fold); then protocol, recipe and machine."""
    lines = [
        f"RAVDESS, {meta['n_utterances']} utterances of {meta['n_actors']} actors, speaker-independent, "
        f"trained from scratch on CPU; test metrics over (seed, fold) runs, mean ± std (%).",
        "",
        "| variant | runs | WA % | UA % | macro-F1 % | full − variant, test UA (paired, ± s.e., n) | min/run |",
        "|---|---|---|---|---|---|---|",
    ]
    for variant, row in summary.items():
        cells = [f"{row[m]['mean']:.1f} ± {row[m]['std']:.1f}" for m in HEADLINE_METRICS]
        diff = row.get("full_minus_this_UA")
        paired = "—" if diff is None else paired_text(diff)
        minutes = statistics.fmean(row["train_seconds_per_run"]) / 60.0
        name = f"{variant} (test speakers' statistics)" if variant in TEST_SPEAKER_STATISTICS else variant
        lines.append(f"| {name} | {len(row['runs'])} | {' | '.join(cells)} | {paired} | {minutes:.1f} |")
    runs = sorted({tuple(k) for row in summary.values() for k in row["runs"]})
    lines += [
        "",
        "Test UA % per run (seed/fold):",
        "",
        "| variant | " + " | ".join(f"{s}/{f}" for s, f in runs) + " |",
    ]
    lines.append("|---|" + "---|" * len(runs))
    for variant, row in summary.items():
        by_run = {tuple(k): v for k, v in zip(row["runs"], row["UA"]["per_run"])}
        lines.append(
            f"| {variant} | " + " | ".join(f"{by_run[k]:.1f}" if k in by_run else "" for k in runs) + " |"
        )
    ends = {v: row["last_epoch"] for v, row in summary.items() if "last_epoch" in row}
    if ends:
        lines += [
            "",
            "How a run ends: the epoch selected on validation speakers against the last epoch's weights, test UA % "
            "(runs that recorded both; the last epoch's score is a record, never used to select); seed spread: mean "
            "over folds of the gap between the seeds' test UA; full − variant as in the first table, at the last "
            "epoch (what a release trained on every speaker ships).",
            "",
            "| variant | runs | selected − last (paired, ± s.e.) | seed spread, selected | seed spread, last "
            "| full − variant, last epoch |",
            "|---|---|---|---|---|---|",
        ]
        for variant, end in ends.items():
            d = end["selected_minus_last_UA"]
            se = f" ± {d['se']:.1f}" if d["se"] is not None else ""
            spreads = [
                "—" if x["mean"] is None else f"{x['mean']:.1f} ({x['folds']} folds)"
                for x in (end["seed_spread_selected"], end["seed_spread_last"])
            ]
            against = "—" if "full_minus_this_UA" not in end else paired_text(end["full_minus_this_UA"])
            lines.append(
                f"| {variant} | {d['n']} | {d['mean']:+.1f}{se} | {spreads[0]} | {spreads[1]} | {against} |"
            )
    lines += teacher_lines(summary)
    lines += class_recall_lines(summary)
    lines += calibration_lines(summary)
    overrides = ", ".join(f"{k}={v}" for k, v in meta["overrides"].items()) or "none"
    lines += [
        "",
        f"Checkpoint selection in every fold, as fold 0's {RESULT_FILE} records it: {meta['selection_rule']}. The validation actors "
        "are drawn from the fold's training actors; the test actors are evaluated once and never used for tuning either.",
        "",
        f"Method variants: preset `{meta['preset']}` with overrides: {overrides}. reference_cnn: benchmarks/reference_cnn.py.",
        "",
        f"Machine: {meta['machine']}.",
        "",
    ]
    return "\n".join(lines)


def teacher_lines(summary: dict[str, dict[str, Any]]) -> list[str]:
    """The distilled students beside their teachers (``teacher_comparison``): one table row, or nothing."""
    against = summary.get(DISTILLED, {}).get("against_teacher")
    if against is None:
        return []
    single = "—" if against["single_UA"] is None else f"{against['single_UA']:.1f}"
    return [
        "",
        f"One model as good as two? The `{DISTILLED}` student, its teachers' two-seed ensemble (`{TEACHER_VARIANT}` "
        f"seeds {', '.join(map(str, TEACHER_SEEDS))} of the same fold) and the single `{TEACHER_VARIANT}` model of "
        "the same (seed, fold), test UA % over the student's runs:",
        "",
        "| runs | student | ensemble (teacher) | single model | student − ensemble (paired) | student − single (paired) |",
        "|---|---|---|---|---|---|",
        f"| {len(against['runs'])} | {against['student_UA']:.1f} | {against['ensemble_UA']:.1f} | {single} | "
        f"{paired_text(against['student_minus_ensemble_UA'])} | {paired_text(against['student_minus_single_UA'])} |",
    ]


def write_summary(
    out: Path, root: Path, overrides: dict[str, Any], threads: int, preset: str = PRESET
) -> str:
    """Summarise every finished run under `out` into accuracy.json and accuracy.md; returns the Markdown."""
    results = collect(out)
    if not results:
        raise FileNotFoundError(
            f"{out}: no finished run (<variant>/seed-<s>/fold-<k>/{RESULT_FILE}); train some first"
        )
    manifest = run_ingest("ravdess", root, progress=False).manifest
    first = next(iter(next(iter(results.values())).values()))
    meta = {
        "n_actors": int(manifest["speaker"].nunique()),
        "n_utterances": len(manifest),
        "machine": f"{cpu_model()}, {usable_cores()} usable cores, {threads} torch thread(s) per run, CPU only",
        "selection_rule": first["selection_rule"],
        "preset": preset,
        "preset_values": preset_settings(preset),
        "overrides": overrides,
        "torch": torch.__version__,
    }
    summary = summarise(results)
    text = markdown(summary, meta)
    out.mkdir(parents=True, exist_ok=True)
    (out / "accuracy.json").write_text(json.dumps({"meta": meta, "summary": summary}, indent=2) + "\n")
    write_reliability_figures(out, summary)
    (out / "accuracy.md").write_text(text)
    return text


def claim(run_dir: Path) -> bool:
    """Take the run for this process: False when it is finished or claimed by a live process."""
    if (run_dir / RESULT_FILE).exists():
        return False
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "claim"
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        try:
            os.kill(int(path.read_text() or 0), 0)
            return False  # its claimer is alive
        except (ProcessLookupError, ValueError):
            path.unlink(missing_ok=True)  # its claimer is gone: take it over
            return claim(run_dir)
    with os.fdopen(fd, "w") as handle:
        handle.write(str(os.getpid()))
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--root",
        default=str(SHARED_RAVDESS),
        help="RAVDESS root (official layout)",
    )
    parser.add_argument(
        "--out", default=str(REPO / "benchmarks" / "results" / "accuracy"), help="output folder"
    )
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {list(VARIANTS)}"
    )
    parser.add_argument("--folds", default=None, help="comma-separated fold indices (default: all)")
    parser.add_argument("--seeds", default="0,1", help="comma-separated seeds")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override of the method's variants",
    )
    parser.add_argument(
        "--preset",
        default=PRESET,
        metavar="NAME|FILE",
        help=f"recipe of the method's variants (default {PRESET}; a preset file from ser tune)",
    )
    parser.add_argument(
        "--summarise-only", action="store_true", help="train nothing; summarise the finished runs under --out"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)

    root = Path(args.root)
    if not root.is_dir():
        print(
            f"error: RAVDESS root {root} not found; pass --root DIR (Actor_01/03-01-…wav layout)",
            file=sys.stderr,
        )
        return BAD_CONFIG_EXIT
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        print(f"error: unknown variant(s) {unknown}; expected some of {list(VARIANTS)}", file=sys.stderr)
        return BAD_CONFIG_EXIT
    try:
        overrides = parse_overrides(args.set)
        experiment_config("ravdess", args.preset, overrides=overrides)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return BAD_CONFIG_EXIT
    out = Path(args.out)
    threads = args.threads or torch.get_num_threads()
    if args.summarise_only:
        print(write_summary(out, root, overrides, threads, args.preset))
        return 0

    ingest = run_ingest("ravdess", root, progress=False)
    manifest, folds = ingest.manifest, ingest.folds
    fold_ids = (
        sorted(folds["fold"].unique()) if args.folds is None else [int(k) for k in args.folds.split(",")]
    )
    for seed in (int(s) for s in args.seeds.split(",")):
        for k in fold_ids:
            for variant in variants:
                run_dir = out / variant / f"seed-{seed}" / f"fold-{k}"
                teachers = teacher_runs(out, int(k)) if variant == DISTILLED else None
                if variant == DISTILLED and teachers is None:
                    log.info("%s seed %d fold %s: skipped, its teachers have not finished", variant, seed, k)
                    continue
                if not claim(run_dir):
                    continue
                if VARIANTS[variant] is None:
                    from reference_cnn import train_reference

                    train_reference(manifest, folds, int(k), root, run_dir, LABELS["ravdess"], seed=seed)
                else:
                    config = experiment_config(
                        "ravdess",
                        args.preset,
                        overrides={**overrides, **VARIANTS[variant], "train.seed": seed},
                    )
                    teacher = None
                    if teachers is not None:
                        teacher = fold_teacher(
                            teachers, training_splits(manifest, folds, int(k))["test"], root
                        )
                    fit(config, manifest, folds, int(k), root, run_dir, teacher=teacher)
                (run_dir / "claim").unlink(missing_ok=True)
                log.info("%s seed %d fold %s done", variant, seed, k)
                write_summary(out, root, overrides, threads, args.preset)
    print(write_summary(out, root, overrides, threads, args.preset))
    return 0


if __name__ == "__main__":
    sys.exit(main())
