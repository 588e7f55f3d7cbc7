"""The entry point of one fold (under torchrun, or alone for one process), launched by the flows
in a subprocess with the command line, fold folder and exit codes of the fold-launch contract
(ser_model/launch.py).

It calls `ser_model.train.fit` (which resumes from `<out>/checkpoints/last`) and leaves the fold
folder's files in `--out`; `--feature-cache DIR` is where a frozen hf backbone's hidden states are
cached (`fit`'s `feature_cache_dir`); `--init DIR` the model folder to start from (`fit`'s `init`,
`--init-source` what the user named it). Bad data (empty split, unreadable audio, unknown labels,
fold not in the table) exits BAD_DATA_EXIT, bad arguments or configuration BAD_CONFIG_EXIT.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch.distributed as dist

from data_contracts.errors import DataContractError
from ser_model.audio import AudioDecodeError
from ser_model.config import SERConfig
from ser_model.config_validation import ConfigError
from ser_model.data import DataSplitError
from ser_model.launch import BAD_CONFIG_EXIT, BAD_DATA_EXIT, WORKER_FLAGS
from ser_model.train import fit
from ser_model.warm_start import InitModel

__all__ = ["BAD_DATA_EXIT", "BAD_CONFIG_EXIT", "main", "build_parser"]

BAD_DATA_ERRORS = (AudioDecodeError, DataSplitError, DataContractError)

log = logging.getLogger("ser_model.worker")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ser_model.worker", description="Train one fold (torchrun entry point)."
    )
    for flag in WORKER_FLAGS:
        parser.add_argument(
            flag.flag, required=flag.required, type=flag.type, metavar=flag.metavar, help=flag.help
        )
    parser.add_argument("--no-resume", action="store_true", help="start afresh even if a checkpoint exists")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = SERConfig.from_json(args.config)
    except (ConfigError, OSError) as exc:
        log.error("bad configuration: %s", exc)
        return BAD_CONFIG_EXIT
    try:
        manifest = pd.read_parquet(args.manifest)
        folds = pd.read_parquet(args.folds)
        result = fit(
            config,
            manifest,
            folds,
            args.fold,
            args.audio_root,
            args.out,
            resume=not args.no_resume,
            feature_cache_dir=args.feature_cache,
            init=None if args.init is None else InitModel(Path(args.init), args.init_source or args.init),
        )
    except BAD_DATA_ERRORS as exc:
        log.error("bad data (not retried): %s", exc)
        return BAD_DATA_EXIT
    except ConfigError as exc:  # e.g. --out holds a checkpoint trained with another configuration
        log.error("bad configuration: %s", exc)
        return BAD_CONFIG_EXIT
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    log.info("fold %s done: selected epoch %d; %s", args.fold, result.selected_epoch, result.selection_rule)
    return 0


if __name__ == "__main__":
    sys.exit(main())
