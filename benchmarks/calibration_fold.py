"""How far one fold's calibration figures can be trusted: a trained fold's model scored again on its
validation and test speakers, the temperature refitted on the validation speakers, and the change in
ECE on the test speakers bootstrapped over the test utterances.

    python benchmarks/calibration_fold.py --manifest M --model runs/ravdess/fold-0/best --fold 0

Prints T, ECE/Brier/NLL before and after on the test speakers, accuracy and mean confidence on
each side, the T that would minimise the test NLL (a diagnostic: never used to calibrate, the test
speakers select nothing) with the ECE it would give, the ECE a perfectly calibrated model would read
on this many test utterances (``calibration_error_floor``), and the bootstrap mean and 95 % interval of ECE_after − ECE_before with
the share of resamples in which it is ≤ 0. ``--json FILE`` writes the same figures.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from data_contracts.folds import fold_rows_by_role
from data_contracts.ingest import read_ingest_outputs
from ser_model.calibration import (
    calibration_error_floor,
    calibration_record,
    expected_calibration_error,
    fit_temperature,
    scaled_probabilities,
)
from ser_model.ensemble import load_model
from ser_model.evaluation import rows_logits


def bootstrap_ece_change(
    logits: np.ndarray, labels: np.ndarray, temperature: float, resamples: int, seed: int = 0
) -> dict[str, float]:
    """ECE(softmax(z/T)) − ECE(softmax(z)) over ``resamples`` draws of the utterances with
    replacement: its mean, 2.5 and 97.5 percentiles and the share of draws ≤ 0."""
    rng = np.random.default_rng(seed)
    before, after = scaled_probabilities(logits, 1.0), scaled_probabilities(logits, temperature)
    changes = []
    for _ in range(resamples):
        i = rng.integers(0, len(labels), len(labels))
        ece_after, ece_before = (expected_calibration_error(p[i], labels[i]) for p in (after, before))
        changes.append(ece_after - ece_before)
    d = np.asarray(changes)
    low, high = np.percentile(d, [2.5, 97.5])
    return {
        "mean": float(d.mean()),
        "low": float(low),
        "high": float(high),
        "share_not_worse": float((d <= 0).mean()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", required=True, help="the folder `ser ingest --out` wrote")
    parser.add_argument("--model", required=True, help="the fold's model folder (its best/)")
    parser.add_argument("--fold", type=int, required=True)
    parser.add_argument("--root", help="the corpus root (default: the ingest report's)")
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)
    ingested = read_ingest_outputs(args.manifest)
    root = args.root or ingested.report["root"]
    splits = fold_rows_by_role(ingested.manifest, ingested.folds, args.fold)
    model = load_model(args.model)
    (zv, yv), (zt, yt) = (rows_logits(model, splits[s], root) for s in ("valid", "test"))
    record = calibration_record(zv, yv, zt, yt)
    temperature, oracle = record["temperature"], fit_temperature(zt, yt)
    figures = {
        "temperature": temperature,
        **{f"{k}_{w}": record[f"{k}_{w}"] for k in ("ECE", "brier", "NLL") for w in ("before", "after")},
        "valid_accuracy": float(np.mean(zv.argmax(1) == yv)),
        "valid_mean_confidence": float(scaled_probabilities(zv, 1.0).max(1).mean()),
        "test_accuracy": float(np.mean(zt.argmax(1) == yt)),
        "test_mean_confidence_before": float(scaled_probabilities(zt, 1.0).max(1).mean()),
        "test_mean_confidence_after": float(scaled_probabilities(zt, temperature).max(1).mean()),
        "test_nll_temperature_diagnostic": oracle,
        "ECE_at_test_nll_temperature_diagnostic": expected_calibration_error(
            scaled_probabilities(zt, oracle), yt
        ),
        "ECE_floor_after": calibration_error_floor(record["reliability_after"]),
        "ece_change_bootstrap": bootstrap_ece_change(zt, yt, temperature, args.resamples),
        "n": {"valid": len(yv), "test": len(yt)},
    }
    for name, value in figures.items():
        print(f"{name}: {json.dumps(value) if isinstance(value, dict) else round(value, 4)}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
