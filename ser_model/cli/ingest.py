"""`ser ingest`: check, fold and write a dataset's manifest, quarantine, folds and report.

    ser ingest CORPUS ROOT --out DIR                  one of the corpora in its official layout
    ser ingest table LABELS.csv --name NAME --out DIR your own recordings, listed in a CSV or Parquet table
    ser ingest folders ROOT --name NAME --out DIR     a folder per label (ROOT/<label>/…/*.wav)

Common options: ``--workers N``, ``--no-progress``. Tables also take ``--labels a,b,c``,
``--label-map FILE.json`` and ``--folds K`` (docs/YOUR_DATA.md; the format and the bad-row
reasons are in `data_contracts.corpora.table`).
"""

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


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out",
        required=True,
        help="output folder for manifest.parquet, quarantine.parquet, folds.parquet, report.json",
    )
    parser.add_argument(
        "--workers", type=_workers, default=None, help="decoding threads (default: all cores)"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _table_options(parser: argparse.ArgumentParser) -> None:
    from data_contracts.corpora.table import DEFAULT_FOLDS

    parser.add_argument(
        "--name", required=True, help="dataset name: a slug [a-z0-9][a-z0-9-]*, not a corpus's name"
    )
    parser.add_argument("--labels", help="comma-separated classes to keep (default: every label of the data)")
    parser.add_argument(
        "--label-map", metavar="FILE.json", help='JSON object merging labels, e.g. {"calm": "neutral"}'
    )
    parser.add_argument(
        "--folds",
        type=int,
        default=DEFAULT_FOLDS,
        help=f"k of the speaker k-fold (default {DEFAULT_FOLDS}; fewer when there are fewer speakers)",
    )
    _common(parser)


def add_parser(commands) -> None:
    """`ser ingest` and its sources: one per corpus, ``table`` and ``folders``."""
    ingest = commands.add_parser(
        "ingest",
        help="check and fold a corpus, a labels table or a folder per label; write manifest, quarantine, folds, report",
    )
    sources = ingest.add_subparsers(dest="source_kind", required=True, metavar="{CORPUS,table,folders}")
    for corpus in CORPORA:
        parser = sources.add_parser(corpus, help=f"{corpus} in its official layout")
        parser.add_argument("root", help="corpus root: a local folder or s3://bucket/prefix")
        _common(parser)
        parser.set_defaults(handler=run, corpus=corpus)
    table = sources.add_parser("table", help="your own recordings listed in a CSV or Parquet table")
    table.add_argument("table", help="the table: a local .csv/.parquet or s3://bucket/prefix/labels.csv")
    _table_options(table)
    table.set_defaults(handler=run_table)
    folders = sources.add_parser("folders", help="your own recordings in a folder per label")
    folders.add_argument("root", help="ROOT of ROOT/<label>/…/*.wav: a local folder or s3://bucket/prefix")
    folders.add_argument(
        "--speaker-pattern",
        metavar="REGEX",
        help=r"regular expression with a named group speaker, searched in each relative path, e.g. '(?P<speaker>spk\d+)/'",
    )
    _table_options(folders)
    folders.set_defaults(handler=run_table)


def _summary(result, args: argparse.Namespace, name: str) -> int:
    """Write the four outputs and print the summary; the exit code."""
    from data_contracts.ingest import write_ingest_outputs

    try:
        paths = write_ingest_outputs(result, args.out)
    except OSError as err:
        print(f"ser ingest: error: cannot write outputs to {args.out}: {err}", file=sys.stderr)
        return BAD_CONFIG_EXIT
    report = result.report
    print(
        f"{name}: {report['utterances']} utterances, {len(report['quarantined'])} quarantined, "
        f"{len(report['folds'])} folds, {report['duration_s']['total'] / 3600:.2f} h of audio"
    )
    if report["no_fold_protocol"]:
        print(
            f"ser ingest: warning: no fold protocol fits, so folds.parquet is empty ({report['no_fold_protocol']}); "
            f"score this set whole with: ser evaluate --model M --manifest {args.out} --split all",
            file=sys.stderr,
        )
    if report.get("kind") == "table":
        print(f"classes: {', '.join(report['labels'])}")
    for reason, count in report["quarantine_counts"].items():
        print(f"  quarantined {reason}: {count}")
    print(f"fingerprint {result.fingerprint}")
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0


def run(args: argparse.Namespace) -> int:
    """`ser ingest CORPUS ROOT`: parse, check and fold a corpus, write the four outputs, print a
    summary. A local root is recorded absolute in report.json, so `--manifest DIR` finds the audio
    from any folder."""
    from data_contracts.ingest import run_ingest

    root = args.root if "://" in args.root else os.path.abspath(args.root)
    result = run_ingest(args.corpus, root, workers=args.workers, progress=not args.no_progress)
    return _summary(result, args, args.corpus)


def run_table(args: argparse.Namespace) -> int:
    """`ser ingest table` / `ser ingest folders`: read the table (or build it from the folders),
    check every row and its audio, fold by speaker (or the split column), write the four outputs."""
    from data_contracts.corpora.folders import folders_table
    from data_contracts.corpora.table import read_label_map
    from data_contracts.table_ingest import run_table_ingest

    table = folders_table(args.root, args.speaker_pattern) if args.source_kind == "folders" else args.table
    result = run_table_ingest(
        table,
        args.name,
        labels=[x.strip() for x in args.labels.split(",") if x.strip()] if args.labels else None,
        label_map=read_label_map(args.label_map) if args.label_map else None,
        fold_count=args.folds,
        workers=args.workers,
        progress=not args.no_progress,
    )
    return _summary(result, args, args.name)
