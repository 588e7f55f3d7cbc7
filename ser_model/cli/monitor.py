"""`ser monitor --model M --manifest DIR --reference DIR [--margin 0.1] [--fold-mean-ua X] [--json FILE]`:
score a model (the champion) on the rows of ``--manifest`` that are not in ``--reference`` (the
`ser ingest` folder of the data it trained on), measure drift and print a short report
(ser_model/monitor.py); the champion's fold-mean UA comes from ``--fold-mean-ua``, or from the
registry for a ``models:/`` model (a ``FoldMeanUA`` given to `main`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from data_contracts.labels import LABELS
from ser_model.cli.arguments import MODEL_HELP, local_root
from ser_model.cli.hooks import FoldMeanUA
from ser_model.config_validation import ConfigError
from ser_model.launch import BAD_CONFIG_EXIT
from ser_model.metrics import DEFAULT_UA_MARGIN


def _margin(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"--margin must be >= 0 (absolute UA), got {text}")
    return value


def add_parser(commands) -> None:
    """`ser monitor` and its arguments."""
    monitor = commands.add_parser(
        "monitor",
        help="score a model on the utterances it never trained on and measure drift against its training data",
        description="New rows are those of --manifest whose audio sha256 is not in --reference (a renamed copy is not "
        "new). Drift: KS statistic for duration and loudness, total variation for sample rate, channels, class, speaker "
        "and the model's predicted classes (against its predictions on the release model's validation speakers).",
    )
    monitor.add_argument("--model", required=True, help=MODEL_HELP)
    monitor.add_argument(
        "--manifest",
        required=True,
        metavar="DIR",
        help="ser ingest folder of the data now (the new rows among them)",
    )
    monitor.add_argument(
        "--reference",
        required=True,
        metavar="DIR",
        help="ser ingest folder of the data the model was trained on",
    )
    monitor.add_argument("--root", help="where --manifest's audio is now, if it moved")
    monitor.add_argument("--reference-root", help="where --reference's audio is now, if it moved")
    monitor.add_argument(
        "--fold-mean-ua",
        type=float,
        help="the model's cross-validated fold-mean UA to compare with (default: the registry's, for models:/)",
    )
    monitor.add_argument(
        "--margin",
        type=_margin,
        default=DEFAULT_UA_MARGIN,
        help=f"flag the model when its UA on new rows is more than this below its fold mean (default {DEFAULT_UA_MARGIN})",
    )
    monitor.add_argument("--batch-size", type=int, default=16)
    monitor.add_argument(
        "--json", metavar="FILE", help="also write the report (metrics, drift, verdict) to this file"
    )
    monitor.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """`ser monitor`: the champion on new data (ser_model.monitor.watch_champion), as a short report."""
    from data_contracts.ingest import read_ingest_outputs
    from ser_model.calibration import read_calibration
    from ser_model.ensemble import load_model
    from ser_model.monitor import watch_champion

    new, reference = read_ingest_outputs(args.manifest), read_ingest_outputs(args.reference)
    corpus = new.report["corpus"]
    if reference.report["corpus"] != corpus:
        raise ConfigError(
            f"ser monitor: --manifest {args.manifest} holds {corpus} but --reference {args.reference} holds "
            f"{reference.report['corpus']}; expected the same corpus"
        )
    model = load_model(args.model)
    if tuple(model.labels) != LABELS[corpus]:
        raise ConfigError(
            f"{args.model_source}: the model's classes {list(model.labels)} are not {corpus}'s {list(LABELS[corpus])}"
        )
    ua_mean = args.fold_mean_ua
    fold_mean_ua: FoldMeanUA | None = getattr(args, "fold_mean_ua_source", None)
    if ua_mean is None and fold_mean_ua is not None and args.model_source != args.model:
        ua_mean = fold_mean_ua(args.model_source)
    result = watch_champion(
        model,
        new.manifest,
        local_root(args.root or new.report["root"]),
        reference.manifest,
        reference.folds,
        local_root(args.reference_root or reference.report["root"]),
        champion_ua_mean=ua_mean,
        margin=args.margin,
        batch_size=args.batch_size,
        calibration=read_calibration(args.model),
    )
    print(f"{args.model_source} on {corpus} {args.manifest} against {args.reference}:")
    for line in result.report_lines():
        print(f"  {line}")
    if args.json:
        report = {
            "verdict": result.verdict(),
            "degraded": result.degraded,
            **result.flat_metrics(),
            "metrics": result.metrics,
        }
        try:
            Path(args.json).write_text(json.dumps(report, indent=2), encoding="utf-8")
        except OSError as err:
            print(f"ser monitor: error: cannot write {args.json}: {err}", file=sys.stderr)
            return BAD_CONFIG_EXIT
    return 0
