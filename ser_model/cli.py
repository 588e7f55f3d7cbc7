"""The `ser` command line on local folders (the `ser` console script, `flows.cli`, wraps it to
resolve `models:/...` registry URIs):

    ser ingest CORPUS ROOT --out DIR
    ser train --corpus C --root DIR --fold K [--preset P] [--backbone B] [--epochs N] [--out DIR] [--config F] [--set key=value ...]
    ser evaluate --model DIR --corpus C --root DIR --fold K [--split test|valid|train]
    ser evaluate --model DIR --corpus C --root DIR --split all
    ser predict FILE... --model DIR [--json]
    ser export --onnx --model DIR --out FILE

`train` and `evaluate` ingest the corpus in memory (the same parser, checks and folds as the
ingest flow). `evaluate --split all` scores every utterance of the root and needs no fold, so
it also scores a held-out set too small for any fold protocol. ``--model`` takes a checkpoint
folder, or through the `ser` console script a registry model ``models:/NAME@ALIAS`` (or
``models:/NAME/VERSION``). Exit codes: 0 done, 2 bad input (message on stderr).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from data_contracts.cli import add_ingest_parser
from data_contracts.errors import DataContractError
from data_contracts.ingest import run_ingest
from data_contracts.labels import CORPORA, LABELS
from ser_model.audio import AudioDecodeError
from ser_model.config import ConfigError, SERConfig
from ser_model.presets import PRESETS, experiment_config
from ser_model.data import DataSplitError

__all__ = ["main", "build_parser", "parse_overrides", "train_config", "metrics_line"]

BAD_INPUT_EXIT = 2
MODEL_HELP = (
    "checkpoint folder (config.json, model.safetensors, labels.json), or a registered model "
    "models:/NAME@ALIAS or models:/NAME/VERSION, e.g. models:/ser-ravdess@champion (MLflow server from MLFLOW_TRACKING_URI)"
)
ALL_SPLIT = "all"
BAD_INPUT_ERRORS = (DataContractError, ConfigError, DataSplitError, AudioDecodeError, FileNotFoundError)


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """["train.lr=3e-4", "model.fbank_strides=[2,2]", "corpus=ravdess"] → {key: value}; values
    are read as JSON when they parse (numbers, booleans, null, lists) and as strings otherwise."""
    overrides = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. train.lr=3e-4")
        try:
            overrides[key.strip()] = json.loads(text)
        except json.JSONDecodeError:
            overrides[key.strip()] = text
    return overrides


def train_config(
    corpus: str, backbone: str | None, config_path: str | None, epochs: int | None, sets: Sequence[str], preset: str | None = None
) -> SERConfig:
    """The config of `ser train`: the --preset (default: `cpu-fbank`, or `paper-wavlm` for an hf
    backbone) or a --config file, then --backbone, --epochs and every --set on top."""
    overrides = parse_overrides(sets)
    if epochs is not None:
        overrides = {"train.epochs": epochs, **overrides}
    base = SERConfig.from_json(config_path) if config_path else None
    return experiment_config(corpus, preset, backbone=backbone, overrides=overrides, base=base)


def metrics_line(name: str, metrics: dict[str, Any]) -> str:
    """'test: WA 61.25% UA 60.80% macro-F1 60.11% (n=240)'."""
    return f"{name}: WA {100 * metrics['WA']:.2f}% UA {100 * metrics['UA']:.2f}% macro-F1 {100 * metrics['macro_f1']:.2f}% (n={metrics['n']})"


def _local_root(root: str) -> str:
    if "://" in root:
        raise DataSplitError(f"--root {root}: training and evaluation read audio from a local folder; got a URL")
    return root


def run_train(args: argparse.Namespace) -> int:
    from ser_model.train import fit

    config = train_config(args.corpus, args.backbone, args.config, args.epochs, args.set, args.preset)
    ingest = run_ingest(args.corpus, _local_root(args.root), progress=False)
    out = Path(args.out or f"runs/{args.corpus}/{'release' if args.fold < 0 else f'fold-{args.fold}'}")
    result = fit(config, ingest.manifest, ingest.folds, args.fold, args.root, out, resume=not args.no_resume)
    print(f"{args.corpus} fold {args.fold}, selected epoch {result.selected_epoch}: {result.selection_rule}")
    print(metrics_line("valid", result.valid))
    if result.test:
        print(metrics_line("test", result.test))
    print(f"wrote {out / 'best'}, {out / 'result.json'}, {out / 'metrics.jsonl'}")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from ser_model.model import SERModel
    from ser_model.train import evaluate_rows, fold_splits

    if args.split == ALL_SPLIT and args.fold is not None:
        raise DataSplitError(f"ser evaluate --split all --fold {args.fold}: --split all scores every utterance of the root; drop --fold")
    if args.split != ALL_SPLIT and args.fold is None:
        raise DataSplitError(f"ser evaluate --split {args.split}: needs --fold K (or --split all to score every utterance)")
    model = SERModel.from_pretrained(args.model)
    if tuple(model.labels) != LABELS[args.corpus]:
        raise ConfigError(f"{args.model}: the model's classes {list(model.labels)} are not {args.corpus}'s {list(LABELS[args.corpus])}")
    ingest = run_ingest(args.corpus, _local_root(args.root), progress=False)
    if args.split == ALL_SPLIT:
        rows, what = ingest.manifest, f"{args.corpus} all utterances of {args.root}"
    else:
        rows, what = fold_splits(ingest.manifest, ingest.folds, args.fold)[args.split], f"{args.corpus} fold {args.fold} {args.split}"
    if rows.empty:
        raise DataSplitError(f"{what}: no utterances to score")
    metrics = evaluate_rows(model, rows, args.root, batch_size=args.batch_size)
    speakers = ", ".join(sorted(rows["speaker"].unique()))
    print(metrics_line(f"{what} ({speakers})", metrics))
    if args.json:
        Path(args.json).write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from ser_model.inference import Predictor

    predictor = Predictor.from_pretrained(args.model, window_seconds=args.window_seconds)
    predictions = predictor.predict_files(args.files)
    for path, prediction in zip(args.files, predictions):
        if args.json:
            print(json.dumps({"file": path, **prediction}))
        else:
            probabilities = " ".join(f"{label}={p:.3f}" for label, p in prediction["probabilities"].items())
            print(f"{path}\t{prediction['label']}\t{probabilities}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from ser_model.export import export_onnx

    if not args.onnx:
        raise ConfigError("ser export: choose a format; --onnx is the one supported")
    path = export_onnx(args.model, args.out)
    print(f"wrote {path} (inputs waves (B, L) float32 at the model rate, lengths (B,) int64; outputs logits, probabilities)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ser", description="Speech emotion recognition: ingest, train, evaluate, predict, export.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)
    add_ingest_parser(commands)

    train = commands.add_parser("train", help="train one fold (or the release model) of a corpus")
    train.add_argument("--corpus", required=True, choices=CORPORA)
    train.add_argument("--root", required=True, help="local corpus root in its official layout")
    train.add_argument(
        "--preset", choices=sorted(PRESETS),
        help="training recipe (ser_model/presets.py; default: cpu-fbank, or paper-wavlm with an hf: backbone)",
    )
    train.add_argument("--backbone", help="'fbank' or 'hf:<hub id or local folder>' (default: the preset's)")
    train.add_argument("--fold", required=True, type=int, help="fold to train; -1 trains the release model")
    train.add_argument("--epochs", type=int)
    train.add_argument("--out", help="output folder (default runs/<corpus>/fold-<k>)")
    train.add_argument("--config", help="SERConfig JSON file to start from (instead of a preset)")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, e.g. train.lr=3e-4 (repeatable)")
    train.add_argument("--no-resume", action="store_true", help="start afresh even if the output folder holds a checkpoint")
    train.set_defaults(handler=run_train)

    evaluate = commands.add_parser("evaluate", help="metrics of a trained model on one fold's held-out speakers, or on every utterance of a root")
    evaluate.add_argument("--model", required=True, help=MODEL_HELP)
    evaluate.add_argument("--corpus", required=True, choices=CORPORA)
    evaluate.add_argument("--root", required=True)
    evaluate.add_argument("--fold", type=int, help="fold whose speakers to score (required unless --split all)")
    evaluate.add_argument(
        "--split", choices=("test", "valid", "train", ALL_SPLIT), default="test",
        help="speakers of --fold to score, or 'all': every utterance of the root, no folds needed (a held-out set)",
    )
    evaluate.add_argument("--batch-size", type=int, default=16)
    evaluate.add_argument("--json", help="also write the metrics (confusion, per-class recall) to this file")
    evaluate.set_defaults(handler=run_evaluate)

    predict = commands.add_parser("predict", help="emotion of audio files (any rate, channels, length)")
    predict.add_argument("files", nargs="+")
    predict.add_argument("--model", required=True, help=MODEL_HELP)
    predict.add_argument(
        "--window-seconds", type=float,
        help="longer inputs are cut into windows of this length (default 60: the whole utterance, as in evaluation)",
    )
    predict.add_argument("--json", action="store_true", help="one JSON object per file")
    predict.set_defaults(handler=run_predict)

    export = commands.add_parser("export", help="export a checkpoint folder")
    export.add_argument("--onnx", action="store_true", help="ONNX with dynamic batch and time axes")
    export.add_argument("--model", required=True, help=MODEL_HELP)
    export.add_argument("--out", required=True, help="output .onnx file")
    export.set_defaults(handler=run_export)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.handler(args)
    except BAD_INPUT_ERRORS as err:
        print(f"ser {args.command}: error: {err}", file=sys.stderr)
        return BAD_INPUT_EXIT


if __name__ == "__main__":
    sys.exit(main())
