"""The same variant in two accuracy grids: code of one day against another's, run for run.

    python benchmarks/grid_compare.py OLD_GRID NEW_GRID [--variant full]

OLD_GRID and NEW_GRID are `benchmarks/accuracy.py --out` folders. Their runs pair by (seed, fold):
the same protocol, folds and seeds, only the code differs. Prints per pair the test UA of each side
and new − old, then the paired difference over the pairs both grids finished (mean, standard error
sd(d)/√n, ahead / behind: `accuracy.paired_difference`), and the same for the ECE after calibration
where both sides recorded it. "No loss beyond noise" reads: |mean| within about two standard errors.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import collect, paired_difference, paired_text  # noqa: E402


def comparison(old: Path, new: Path, variant: str) -> dict:
    """{"pairs": [(seed, fold, old UA %, new UA %)], "UA": paired new − old (points), "ECE_after": the
    same for calibrated ECE where both runs have it, or None}."""
    sides = [collect(folder).get(variant, {}) for folder in (old, new)]
    ua = [{key: 100 * run["test"]["UA"] for key, run in side.items()} for side in sides]
    ece = [
        {key: run["calibration"]["ECE_after"] for key, run in side.items() if "calibration" in run}
        for side in sides
    ]
    pairs = [
        (seed, fold, ua[0][seed, fold], ua[1][seed, fold]) for seed, fold in sorted(set(ua[0]) & set(ua[1]))
    ]
    both_ece = set(ece[0]) & set(ece[1])
    return {
        "pairs": pairs,
        "UA": paired_difference(ua[1], ua[0]),
        "ECE_after": paired_difference(ece[1], ece[0]) if both_ece else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old", type=Path, help="the earlier grid folder")
    parser.add_argument("new", type=Path, help="the later grid folder")
    parser.add_argument("--variant", default="full")
    args = parser.parse_args(argv)
    for folder in (args.old, args.new):
        if not folder.is_dir():
            print(f"error: grid folder {folder} not found", file=sys.stderr)
            return 2
    result = comparison(args.old, args.new, args.variant)
    if not result["pairs"]:
        print(f"error: no ({args.variant}, seed, fold) run finished in both grids", file=sys.stderr)
        return 1
    print(f"| seed | fold | {args.old} test UA % | {args.new} test UA % | new − old |\n|---|---|---|---|---|")
    for seed, fold, old_ua, new_ua in result["pairs"]:
        print(f"| {seed} | {fold} | {old_ua:.1f} | {new_ua:.1f} | {new_ua - old_ua:+.1f} |")
    print(f"test UA, new − old: {paired_text(result['UA'])}")
    if result["ECE_after"]:
        d = result["ECE_after"]
        print(f"ECE after calibration, new − old: {d['mean']:+.4f} (n={d['n']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
