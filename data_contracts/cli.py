"""The ``ser ingest`` subcommand: `add_ingest_parser` registers it, `run_ingest_command` runs it.

    ser ingest CORPUS ROOT --out DIR [--workers N] [--no-progress]

Prints a short summary and returns 0; on bad input prints the error to stderr and returns 2
(no traceback). A root with too few speakers for any fold protocol (a held-out set) is not bad
input: the outputs are written (folds.parquet empty), a warning on stderr says why, and the
exit code is 0.
"""

from __future__ import annotations

import argparse
import sys

from data_contracts.errors import DataContractError
from data_contracts.ingest import run_ingest, write_ingest_outputs
from data_contracts.labels import CORPORA


def _workers(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"--workers must be >= 1, got {value}")
    return value


def add_ingest_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``ingest`` subcommand to an argparse subparsers object; returns its parser."""
    parser = subparsers.add_parser(
        "ingest",
        help="parse, check and fold a corpus in its official layout; write manifest, quarantine, folds, report",
    )
    parser.add_argument("corpus", choices=CORPORA, help="corpus name")
    parser.add_argument("root", help="corpus root: a local folder or s3://bucket/prefix")
    parser.add_argument("--out", required=True, help="output folder for manifest.parquet, quarantine.parquet, folds.parquet, report.json")
    parser.add_argument("--workers", type=_workers, default=None, help="decoding processes (default: all cores)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(handler=run_ingest_command)
    return parser


def run_ingest_command(args: argparse.Namespace) -> int:
    """Run ``ser ingest``; 0 on success, 2 on bad input (message on stderr)."""
    try:
        result = run_ingest(args.corpus, args.root, workers=args.workers, progress=not args.no_progress)
        paths = write_ingest_outputs(result, args.out)
    except DataContractError as err:
        print(f"ser ingest: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"ser ingest: error: cannot write outputs to {args.out}: {err}", file=sys.stderr)
        return 2
    report = result.report
    print(
        f"{args.corpus}: {report['utterances']} utterances, {len(report['quarantined'])} quarantined, "
        f"{len(report['folds'])} folds, {report['duration_s']['total'] / 3600:.2f} h of audio"
    )
    if report["no_fold_protocol"]:
        print(
            f"ser ingest: warning: no fold protocol fits, so folds.parquet is empty ({report['no_fold_protocol']}); "
            f"score this set whole with: ser evaluate --model M --corpus {args.corpus} --root {args.root} --split all",
            file=sys.stderr,
        )
    for reason, count in report["quarantine_counts"].items():
        print(f"  quarantined {reason}: {count}")
    print(f"fingerprint {result.fingerprint}")
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0
