"""`ser ingest CORPUS ROOT --out DIR [--workers N] [--no-progress]`: parse, check and fold a corpus
in its official layout; write the manifest, quarantine, folds and report."""

from __future__ import annotations

import argparse
import os
import sys

from data_contracts.labels import CORPORA
from ser_model.launch import BAD_CONFIG_EXIT


def _workers(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"--workers must be >= 1, got {value}")
    return value


def add_parser(commands) -> None:
    """`ser ingest` and its arguments."""
    ingest = commands.add_parser(
        "ingest",
        help="parse, check and fold a corpus in its official layout; write manifest, quarantine, folds, report",
    )
    ingest.add_argument("corpus", choices=CORPORA, help="corpus name")
    ingest.add_argument("root", help="corpus root: a local folder or s3://bucket/prefix")
    ingest.add_argument(
        "--out",
        required=True,
        help="output folder for manifest.parquet, quarantine.parquet, folds.parquet, report.json",
    )
    ingest.add_argument(
        "--workers", type=_workers, default=None, help="decoding threads (default: all cores)"
    )
    ingest.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    ingest.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """`ser ingest`: parse, check and fold a corpus, write the four outputs, print a summary. A
    local root is recorded absolute in report.json, so `--manifest DIR` finds the audio from any folder."""
    from data_contracts.ingest import run_ingest, write_ingest_outputs

    root = args.root if "://" in args.root else os.path.abspath(args.root)
    result = run_ingest(args.corpus, root, workers=args.workers, progress=not args.no_progress)
    try:
        paths = write_ingest_outputs(result, args.out)
    except OSError as err:
        print(f"ser ingest: error: cannot write outputs to {args.out}: {err}", file=sys.stderr)
        return BAD_CONFIG_EXIT
    report = result.report
    print(
        f"{args.corpus}: {report['utterances']} utterances, {len(report['quarantined'])} quarantined, "
        f"{len(report['folds'])} folds, {report['duration_s']['total'] / 3600:.2f} h of audio"
    )
    if report["no_fold_protocol"]:
        print(
            f"ser ingest: warning: no fold protocol fits, so folds.parquet is empty ({report['no_fold_protocol']}); "
            f"score this set whole with: ser evaluate --model M --manifest {args.out} --split all",
            file=sys.stderr,
        )
    for reason, count in report["quarantine_counts"].items():
        print(f"  quarantined {reason}: {count}")
    print(f"fingerprint {result.fingerprint}")
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0
