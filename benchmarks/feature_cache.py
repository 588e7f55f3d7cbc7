"""Epoch time of a frozen-backbone run from the feature cache against the same run live, in one run.

    python benchmarks/feature_cache.py [--root ../shared/data/ravdess] [--out benchmarks/results/feature_cache]
                                       [--per-speaker 3] [--epochs 2] [--repeats 1] [--threads N] [--hf-shape base] [--quick]

Both sides are `ser_model.train.fit` on the same RAVDESS rows (fold 0, `--per-speaker`
utterances of every actor), with the `paper-wavlm` preset on a random WavLM (`--hf-shape`:
"base" = WavLM-Base's shape, 94 M parameters; "small" = conv stack at 256 channels, 4 layers of
width 256; no download),
`model.backbone_mode=frozen`, EAM off, fp32 on CPU:

* cached: `train.feature_cache=true`: every epoch trains and validates from the cached states;
  the cache is computed once before the fits (the one-off cost, reported as `fill_s`);
* live: `train.feature_cache=false`, the backbone runs on every batch.

An epoch's time is fit's own `seconds` (training batches and the validation pass). The sides
take turns (live, cached, live, cached, ...) `--repeats` times with fresh output folders. The ratio is the
median live epoch over the median cached epoch; target >= 10. Figures, not assertions: the
JSON and Markdown record the load average at the start and the end.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from benchmarks.common import load_average, machine_info, machine_markdown  # noqa: E402
from benchmarks.model_perf import HF_SHAPES  # noqa: E402
from data_contracts.ingest import run_ingest  # noqa: E402
from ser_model.feature_cache import FeatureCache  # noqa: E402
from ser_model.hf_backbone import save_random_hf_backbone  # noqa: E402
from ser_model.model import SERModel  # noqa: E402
from ser_model.presets import experiment_config  # noqa: E402
from ser_model.train import fit  # noqa: E402
from ser_stack.settings import SHARED_RAVDESS  # noqa: E402

log = logging.getLogger("benchmarks.feature_cache")

DEFAULT_ROOT = SHARED_RAVDESS
DEFAULT_OUT = REPO / "benchmarks" / "results" / "feature_cache"
TARGET = 10.0
FOLD = 0


def bench_feature_cache(
    root: Path, work: Path, *, per_speaker: int, epochs: int, repeats: int, hf_shape: str
) -> dict[str, Any]:
    """Alternate live and cached fits on the same rows; return per-epoch seconds of each side and the ratio."""
    ingest = run_ingest("ravdess", root, progress=False)
    rows = ingest.manifest.groupby("speaker", group_keys=False).head(per_speaker).reset_index(drop=True)
    backbone = save_random_hf_backbone(work / "wavlm", HF_SHAPES[hf_shape]())
    overrides = {
        "model.backbone_mode": "frozen",
        "model.use_layer_weights": None,
        "eam.enabled": False,
        "train.epochs": epochs,
        "train.device": "cpu",
        "train.precision": "fp32",
    }
    config = experiment_config("ravdess", "paper-wavlm", backbone=f"hf:{backbone}", overrides=overrides)
    cache_dir = work / "feature-cache"
    started = time.perf_counter()  # the one-off cost: every utterance's states, computed once
    cache = FeatureCache(cache_dir, SERModel(config).backbone, trim_db=config.model.trim_db)
    cache.dataset(rows, root, config.labels)
    fill_s = time.perf_counter() - started
    epoch_s: dict[str, list[float]] = {"live": [], "cached": []}
    fit_s: dict[str, list[float]] = {"live": [], "cached": []}
    for repeat in range(repeats):
        for side in ("live", "cached"):
            side_config = config.with_overrides({"train.feature_cache": side == "cached"})
            started = time.perf_counter()
            result = fit(
                side_config,
                rows,
                ingest.folds,
                FOLD,
                root,
                work / f"{side}-{repeat}",
                resume=False,
                feature_cache_dir=cache_dir,
            )
            fit_s[side].append(time.perf_counter() - started)
            epoch_s[side] += [record["seconds"] for record in result.history]
            log.info(
                "%s repeat %d: epochs %s s", side, repeat, [round(r["seconds"], 2) for r in result.history]
            )
    live, cached = statistics.median(epoch_s["live"]), statistics.median(epoch_s["cached"])
    splits = {
        name: int((ingest.folds.query("fold == @FOLD")["role"] == name).sum())
        for name in ("train", "valid", "test")
    }
    return {
        "utterances": len(rows),
        "audio_seconds": round(float(rows["duration_s"].sum()), 1),
        "fold": FOLD,
        "speakers_per_role": splits,
        "preset": "paper-wavlm",
        "overrides": overrides,
        "hf_shape": hf_shape,
        "epoch_seconds": {side: [round(s, 3) for s in values] for side, values in epoch_s.items()},
        "fit_seconds": {side: [round(s, 2) for s in values] for side, values in fit_s.items()},
        "fill_s": round(fill_s, 2),
        "median_epoch_s": {"live": round(live, 3), "cached": round(cached, 3)},
        "ratio": round(live / cached, 2),
        "target": TARGET,
        "meets_target": live / cached >= TARGET,
    }


def markdown(report: dict[str, Any]) -> str:
    b = report["bench"]
    lines = [
        "# Feature cache: frozen-backbone epochs, cached vs live (CPU)",
        "",
        f"`fit` on {b['utterances']} RAVDESS utterances ({b['audio_seconds']} s of audio), fold {b['fold']}, "
        f"`paper-wavlm` preset on a random {b['hf_shape']} WavLM, frozen, EAM off, fp32; "
        "an epoch is fit's training batches plus its validation pass.",
        "",
        "| side | epoch seconds (each) | median |",
        "|---|---|---|",
        f"| live (`train.feature_cache=false`) | {b['epoch_seconds']['live']} | {b['median_epoch_s']['live']} |",
        f"| cached | {b['epoch_seconds']['cached']} | {b['median_epoch_s']['cached']} |",
        "",
        f"**Ratio live / cached: {b['ratio']}×** (target ≥ {b['target']}×: {'met' if b['meets_target'] else 'not met'}). "
        f"Computing the cache once (every utterance, before the fits): {b['fill_s']} s.",
        "",
        *machine_markdown(report["machine"]),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--per-speaker", type=int, default=3, help="utterances of each actor (default 3)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--hf-shape", choices=sorted(HF_SHAPES), default="base")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: tiny WavLM, 2 utterances per actor, 1 epoch"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.per_speaker, args.epochs, args.repeats, args.hf_shape = 2, 1, 1, "tiny"
    machine = {**machine_info(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__}
    with tempfile.TemporaryDirectory(prefix="bench-feature-cache-") as work:
        bench = bench_feature_cache(
            args.root,
            Path(work),
            per_speaker=args.per_speaker,
            epochs=args.epochs,
            repeats=args.repeats,
            hf_shape=args.hf_shape,
        )
    machine["load_average_end"] = load_average()
    report = {"machine": machine, "bench": bench, "quick": args.quick}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "feature_cache.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (args.out / "feature_cache.md").write_text(markdown(report), encoding="utf-8")
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
