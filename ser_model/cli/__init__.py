"""The `ser` command line: one argparse tree for every command.

    ser ingest CORPUS ROOT --out DIR [--workers N] [--no-progress]
    ser train (--manifest DIR | --corpus C --root DIR) --fold K [--preset P|FILE] [--backbone B] [--epochs N] [--out DIR] [--config F] [--set key=value ...] [--init MODEL]
    ser tune (--manifest DIR | --corpus C --root DIR) [--preset P|FILE] [--space NAME|FILE] [--trials N] [--epochs N] [--folds 0,1] [--set key=value ...]
    ser evaluate --model M (--manifest DIR | --corpus C --root DIR) --fold K [--split test|valid|train]
    ser evaluate --model M (--manifest DIR | --corpus C --root DIR) --split all
    ser evaluate --model M (--manifest DIR | --corpus C --root DIR) --fold K --segments [--gap silence|noise] [--per-recording 8]
    ser predict FILE... --model M [--json] [--speaker NAME]
    ser predict FILE... --model M --segments [--json | --csv] [--plot PNG] [--segment-set key=value ...]
    ser export --onnx --model M --out FILE
    ser monitor --model M --manifest DIR --reference DIR [--margin 0.1] [--fold-mean-ua X] [--json FILE]

`train` and `evaluate` read what `ser ingest --out DIR` wrote (`--manifest DIR`: manifest, folds
and the corpus root from its report, no audio decoded twice), or ingest a root in memory (the
same parser, checks and folds as the ingest flow). `evaluate --split all` scores every utterance
and needs no fold, so it also scores a held-out set too small for any fold protocol.

``--model`` (and `ser train`'s ``--init``) takes a checkpoint folder, or a URI that a resolver given to `main` turns into one:
the `ser` console script (`flows.cli`) registers the MLflow registry's ``models:/NAME@ALIAS`` and
``models:/NAME/VERSION``; ser_model itself knows no registry.

Exit codes, the fold-launch contract's constants (``ser_model.launch``), with the message on stderr
and no traceback: 0 done; ``BAD_CONFIG_EXIT`` (2) any bad input the user can fix: a command line
argparse refuses (it exits 2 itself), a configuration, a manifest folder or corpus root that fails
its checks, an audio file that is missing or cannot be decoded, a ``--model`` that cannot be found or
fetched, an output folder that cannot be written. ``BAD_DATA_EXIT`` (3) is the worker's alone: the
CLI does not tell bad data from bad arguments, every bad input exits 2.

One module per command (``ser_model/cli/<command>.py``) holds its arguments (``add_parser``) and
what it does (``run``); ``arguments.py`` what several commands share, ``hooks.py`` what the
console script hands `main`.

Start-up: the command modules import no torch, pandas or audio library at the top; each command
imports what it needs when it runs, so `ser --help` answers at once and `ser ingest` never loads torch.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import re
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from data_contracts.errors import DataContractError
from ser_model.allocator import restart_with_heap_env
from ser_model.cli import evaluate, export, ingest, monitor, predict, train, tune
from ser_model.cli.hooks import (
    EvaluationLogger,
    FoldMeanUA,
    ModelPinner,
    ModelResolver,
    ModelSourceError,
    TunerTrackerFactory,
)
from ser_model.config_validation import ConfigError
from ser_model.errors import AudioDecodeError, DataSplitError, MissingSpeakersError
from ser_model.launch import BAD_CONFIG_EXIT
from ser_stack.settings import exit_if_bad_environment

__all__ = ["main", "build_parser"]

COMMANDS = (ingest, train, tune, evaluate, predict, monitor, export)
"""Each command's module, in the order `ser --help` lists them."""
HEAP_BOUND_COMMANDS = ("train", "tune")
"""Commands that train in this process: started from a shell, they restart with the heap policy's
settings (ser_model/allocator.py `restart_with_heap_env`)."""
URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:/")

BAD_INPUT_ERRORS = (
    DataContractError,
    ConfigError,
    DataSplitError,
    AudioDecodeError,
    ModelSourceError,
    MissingSpeakersError,
    FileNotFoundError,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ser", description="Speech emotion recognition: ingest, train, evaluate, predict, export."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(commands)
    return parser


MODEL_ARGUMENTS = ("model", "init")
"""The arguments that name a model: a checkpoint folder, or a URI resolved by `resolve_model`."""


def resolve_model(
    value: str, resolvers: Mapping[str, ModelResolver], scratch: contextlib.ExitStack, flag: str = "--model"
) -> str:
    """The checkpoint folder a ``--model`` (``flag``) value names: the value itself when it is not a URI,
    else what the resolver registered for its prefix fetched into a scratch folder that lives as
    long as `scratch`. A URI no resolver handles raises ModelSourceError naming the known prefixes."""
    for prefix, resolver in resolvers.items():
        if value.startswith(prefix):
            folder = scratch.enter_context(tempfile.TemporaryDirectory(prefix="ser-model-"))
            return str(resolver(value, Path(folder)))
    if URI.match(value):
        known = ", ".join(resolvers) or "none here; the `ser` console script resolves models:/"
        raise ModelSourceError(
            f"{flag} {value}: no resolver for this URI (known: {known}); give a checkpoint folder"
        )
    return value


def main(
    argv: Sequence[str] | None = None,
    resolvers: Mapping[str, ModelResolver] | None = None,
    tune_tracker: TunerTrackerFactory | None = None,
    evaluation_logger: EvaluationLogger | None = None,
    fold_mean_ua: FoldMeanUA | None = None,
    pin_model: ModelPinner | None = None,
) -> int:
    """Run one `ser` command line; `resolvers` maps a ``--model`` URI prefix (``models:/``) to
    the function that fetches such a model (see ModelResolver); `tune_tracker` follows `ser tune`
    studies (see TunerTrackerFactory); `evaluation_logger` records ``ser evaluate
    --mlflow-experiment`` runs; `fold_mean_ua` tells `ser monitor` a registered model's fold-mean UA;
    `pin_model` pins a model argument before it is fetched and recorded (see ModelPinner).
    Returns the exit code."""
    args = build_parser().parse_args(argv)
    exit_if_bad_environment(f"ser {args.command}")  # every SER_* variable, one line naming a bad one
    args.tune_tracker = tune_tracker
    args.evaluation_logger = evaluation_logger
    args.fold_mean_ua_source = fold_mean_ua
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        if argv is None and args.command in HEAP_BOUND_COMMANDS:
            restart_with_heap_env()
        with contextlib.ExitStack() as scratch:
            for name in MODEL_ARGUMENTS:
                if getattr(args, name, None):
                    value = getattr(args, name)
                    if pin_model is not None:
                        value = pin_model(value)
                    setattr(args, f"{name}_source", value)
                    setattr(args, name, resolve_model(value, resolvers or {}, scratch, f"--{name}"))
            return args.handler(args)
    except BAD_INPUT_ERRORS as err:
        print(f"ser {args.command}: error: {err}", file=sys.stderr)
        return BAD_CONFIG_EXIT
