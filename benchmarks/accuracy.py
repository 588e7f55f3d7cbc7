"""Speaker-independent accuracy on real RAVDESS with the fbank backbone, and the paper's ablations.

    python benchmarks/accuracy.py --root ../shared/data/ravdess --out benchmarks/results/accuracy

Protocol: the corpus's folds from `data_contracts.folds` (RAVDESS actors 01–20 → 5 folds of 4
actors); in every fold the checkpoint is selected on validation actors drawn from that fold's
training actors, and the test actors are evaluated once, never used for selection or tuning.
Every variant runs on the same folds with the same seed:

    full      EAM + FLAM + MLL (KL + focal + center + SupCon)
    no_eam    without energy-adaptive mixup
    no_flam   mean pooling instead of the frame-level attention module
    ce_only   cross-entropy alone instead of MLL (KL against the label: CE minus a constant)

Each (variant, fold) writes its own folder with `result.json`; a rerun skips finished ones, so the
command can be stopped and resumed. The summary goes to `accuracy.json` and `accuracy.md`.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from data_contracts.ingest import run_ingest
from data_contracts.labels import LABELS
from ser_model.config import SERConfig
from ser_model.train import fit

REPO = Path(__file__).resolve().parents[1]

# The CPU recipe for the from-scratch fbank encoder (PAPER.md's recipe is for a pretrained WavLM:
# lr 1e-4 is too small for an encoder trained from scratch in a few epochs).
FBANK_RECIPE: dict[str, Any] = {
    "model.backbone": "fbank",
    "train.epochs": 20,
    "train.lr": 1e-3,
    "train.lr_decay": 0.9,
    "train.max_seconds": 4.0,
    "train.batch_size": 16,
}

VARIANTS: dict[str, dict[str, Any]] = {
    "full": {},
    "no_eam": {"eam.enabled": False},
    "no_flam": {"model.flam": False},
    "ce_only": {"loss.focal": False, "loss.center": False, "loss.supcon": False},
}

METRICS = ("WA", "UA", "macro_f1")


def parse_value(text: str) -> Any:
    """`--set key=value` values: JSON when it parses (numbers, booleans, lists), else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def summarise(results: dict[str, dict[int, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Mean ± population std over folds of each metric, per variant (percent)."""
    summary: dict[str, dict[str, Any]] = {}
    for variant, per_fold in results.items():
        row: dict[str, Any] = {"folds": sorted(per_fold)}
        for metric in METRICS:
            values = [100.0 * per_fold[k][metric] for k in sorted(per_fold)]
            row[metric] = {
                "mean": statistics.fmean(values),
                "std": statistics.pstdev(values) if len(values) > 1 else 0.0,
                "per_fold": values,
            }
        summary[variant] = row
    return summary


def markdown(summary: dict[str, dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        f"RAVDESS actors {meta['actors']} · {meta['n_utterances']} utterances · {meta['n_folds']} folds · "
        f"fbank backbone · seed {meta['seed']} · {meta['machine']}",
        "",
        "| variant | WA % | UA % | macro-F1 % | UA per fold |",
        "|---|---|---|---|---|",
    ]
    for variant, row in summary.items():
        cells = [f"{row[m]['mean']:.1f} ± {row[m]['std']:.1f}" for m in METRICS]
        per_fold = " / ".join(f"{v:.1f}" for v in row["UA"]["per_fold"])
        lines.append(f"| {variant} | {' | '.join(cells)} | {per_fold} |")
    lines += ["", f"Checkpoint selection: {meta['selection_rule']}", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=str(REPO.parent / "shared" / "data" / "ravdess"), help="RAVDESS root (official layout)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "accuracy"), help="output folder")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {list(VARIANTS)}")
    parser.add_argument("--folds", default=None, help="comma-separated fold indices (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, e.g. train.epochs=10")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)

    root = Path(args.root)
    if not root.is_dir():
        print(f"error: RAVDESS root {root} not found; pass --root DIR (Actor_01/03-01-…wav layout)", file=sys.stderr)
        return 2
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        print(f"error: unknown variant(s) {unknown}; expected some of {list(VARIANTS)}", file=sys.stderr)
        return 2
    overrides = dict(FBANK_RECIPE, **{"train.seed": args.seed})
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            print(f"error: --set {item!r}: expected KEY=VALUE", file=sys.stderr)
            return 2
        overrides[key] = parse_value(value)

    ingest = run_ingest("ravdess", root, progress=False)
    manifest, folds = ingest.manifest, ingest.folds
    fold_ids = sorted(folds["fold"].unique()) if args.folds is None else [int(k) for k in args.folds.split(",")]
    base = SERConfig(labels=LABELS["ravdess"], corpus="ravdess").with_overrides(overrides)

    out = Path(args.out)
    results: dict[str, dict[int, dict[str, Any]]] = {}
    rule = ""
    seconds: dict[str, float] = {}
    for variant in variants:
        config = base.with_overrides(VARIANTS[variant])
        results[variant] = {}
        for k in fold_ids:
            run_dir = out / variant / f"fold-{k}"
            done = run_dir / "result.json"
            if not done.exists():
                start = time.perf_counter()
                fit(config, manifest, folds, int(k), root, run_dir)
                seconds[f"{variant}/fold-{k}"] = time.perf_counter() - start
            result = json.loads(done.read_text())
            results[variant][int(k)] = result["test"]
            rule = result["selection_rule"]
            print(f"{variant} fold {k}: " + "  ".join(f"{m} {100 * result['test'][m]:.1f}" for m in METRICS), flush=True)

    summary = summarise(results)
    meta = {
        "actors": f"{manifest['speaker'].nunique()} ({', '.join(sorted(manifest['speaker'].unique())[:1])}…)",
        "n_utterances": len(manifest),
        "n_folds": len(fold_ids),
        "seed": args.seed,
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, CPU",
        "selection_rule": rule,
        "fingerprint": ingest.fingerprint,
        "overrides": overrides,
        "seconds_this_run": seconds,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "accuracy.json").write_text(json.dumps({"meta": meta, "summary": summary}, indent=2) + "\n")
    (out / "accuracy.md").write_text(markdown(summary, meta))
    print(markdown(summary, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
