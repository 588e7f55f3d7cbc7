"""What several `ser` commands share: the data arguments (``--manifest`` or ``--corpus`` and
``--root``) and the data they name, ``--model``'s help, ``--set key=value`` overrides, the metrics line."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

from data_contracts.labels import CORPORA
from ser_model.config_validation import ConfigError
from ser_model.errors import DataSplitError
from ser_model.launch import CHECKPOINT_FILES

MODEL_HELP = (
    f"checkpoint folder ({CHECKPOINT_FILES}), or a registered model "
    "models:/NAME@ALIAS or models:/NAME/VERSION, e.g. models:/ser-ravdess@champion (MLflow server from MLFLOW_TRACKING_URI)"
)


def parse_overrides(
    items: Sequence[str], flag: str = "--set", example: str = "train.lr=3e-4"
) -> dict[str, Any]:
    """["train.lr=3e-4", "model.fbank_strides=[2,2]", "corpus=ravdess"] → {key: value}; values
    are read as JSON when they parse (numbers, booleans, null, lists) and as strings otherwise."""
    overrides = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{flag} {item!r}: expected key=value, e.g. {example}")
        try:
            overrides[key.strip()] = json.loads(text)
        except json.JSONDecodeError:
            overrides[key.strip()] = text
    return overrides


def segment_config(sets: Sequence[str]):
    """The SegmentConfig of ``--segment-set key=value`` items on top of the defaults."""
    from ser_model.segments import SegmentConfig

    return SegmentConfig().with_overrides(parse_overrides(sets, flag="--segment-set", example="window_s=6"))


def metrics_line(name: str, metrics: dict[str, Any]) -> str:
    """'test: WA 61.25% UA 60.80% macro-F1 60.11% (n=240)'."""
    return f"{name}: WA {100 * metrics['WA']:.2f}% UA {100 * metrics['UA']:.2f}% macro-F1 {100 * metrics['macro_f1']:.2f}% (n={metrics['n']})"


def local_root(root: str) -> str:
    """``root`` when it is a local folder; a URL raises DataSplitError."""
    if "://" in root:
        raise DataSplitError(
            f"--root {root}: training and evaluation read audio from a local folder; got a URL"
        )
    return root


def add_corpus_data(parser: argparse.ArgumentParser) -> None:
    """The data arguments of `train`, `tune` and `evaluate` (read by :func:`corpus_data`)."""
    data = parser.add_argument_group(
        "data",
        "--manifest DIR (what `ser ingest --out DIR` wrote), or --corpus and --root to ingest in memory",
    )
    data.add_argument(
        "--manifest",
        metavar="DIR",
        help="folder written by ser ingest: manifest, folds and the corpus root from its report",
    )
    data.add_argument(
        "--corpus", choices=CORPORA, help="corpus name (with --root; read from the report with --manifest)"
    )
    data.add_argument(
        "--root",
        help="local corpus root in its official layout (with --manifest: where the audio is now, if it moved)",
    )


def corpus_data(args: argparse.Namespace):
    """``(corpus, audio root, IngestResult)`` of `train` / `evaluate`: read from ``--manifest DIR``
    (the corpus and root from its report; ``--root`` overrides the root when the audio moved),
    or ingested in memory from ``--corpus`` and ``--root``."""
    from data_contracts.ingest import read_ingest_outputs, run_ingest

    command = f"ser {args.command}"
    if args.manifest:
        ingested = read_ingest_outputs(args.manifest)
        corpus = ingested.report["corpus"]
        if args.corpus and args.corpus != corpus:
            raise ConfigError(f"{command} --corpus {args.corpus}: {args.manifest} holds a {corpus} manifest")
        return corpus, local_root(args.root or ingested.report["root"]), ingested
    if not (args.corpus and args.root):
        raise DataSplitError(
            f"{command}: give --manifest DIR (written by ser ingest) or both --corpus and --root"
        )
    return (
        args.corpus,
        local_root(args.root),
        run_ingest(args.corpus, local_root(args.root), progress=False),
    )
