"""`ser train (--manifest DIR | --corpus C --root DIR) --fold K [--preset P|FILE] [--backbone B]
[--epochs N] [--out DIR] [--config F] [--set key=value ...] [--init MODEL]`: train one fold, or the
release model (``--fold -1``), with `ser_model.train.fit`; ``--init`` starts from another model's
weights (`ser_model.warm_start`): a model folder, or ``models:/NAME@ALIAS`` resolved like ``--model``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from ser_model.cli.arguments import add_corpus_data, corpus_data, metrics_line, parse_overrides
from ser_model.config import SERConfig
from ser_model.launch import BEST_FOLDER, METRICS_FILE, RESULT_FILE, fold_folder_name, read_result
from ser_model.presets import PRESETS, experiment_config


def add_parser(commands) -> None:
    """`ser train` and its arguments."""
    train = commands.add_parser("train", help="train one fold (or the release model) of a corpus")
    add_corpus_data(train)
    train.add_argument(
        "--preset",
        metavar="NAME|FILE",
        help=f"training recipe: one of {', '.join(sorted(PRESETS))} (ser_model/presets.py) or a preset file written by "
        "ser tune (default: cpu-fbank, or paper-wavlm with an hf: backbone)",
    )
    train.add_argument("--backbone", help="'fbank' or 'hf:<hub id or local folder>' (default: the preset's)")
    train.add_argument("--fold", required=True, type=int, help="fold to train; -1 trains the release model")
    train.add_argument("--epochs", type=int)
    train.add_argument("--out", help="output folder (default runs/<corpus>/fold-<k>)")
    train.add_argument("--config", help="SERConfig JSON file to start from (instead of a preset)")
    train.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override, e.g. train.lr=3e-4 (repeatable)",
    )
    train.add_argument(
        "--init",
        metavar="MODEL",
        help="start from this model's weights: the backbone and FLAM always, the head too when its classes are "
        "this run's (same labels, same order), else a new head; a model folder, or "
        "models:/NAME@ALIAS or models:/NAME/VERSION, e.g. models:/ser-ravdess@champion (default: from scratch)",
    )
    train.add_argument(
        "--no-resume", action="store_true", help="start afresh even if the output folder holds a checkpoint"
    )
    train.set_defaults(handler=run)


def train_config(
    corpus: str,
    backbone: str | None,
    config_path: str | None,
    epochs: int | None,
    sets: Sequence[str],
    preset: str | None = None,
) -> SERConfig:
    """The config of `ser train`: the --preset (default: `cpu-fbank`, or `paper-wavlm` for an hf
    backbone) or a --config file, then --backbone, --epochs and every --set on top."""
    overrides = parse_overrides(sets)
    if epochs is not None:
        overrides = {"train.epochs": epochs, **overrides}
    base = SERConfig.from_json(config_path) if config_path else None
    return experiment_config(corpus, preset, backbone=backbone, overrides=overrides, base=base)


def calibration_line(calibration: dict) -> str:
    """The temperature and where it comes from; for a fold, ECE on its test speakers before → after."""
    line = f"calibration: T {calibration['temperature']:.3f}"
    if "ECE_after" in calibration:
        return f"{line} fitted on the validation speakers; test ECE {calibration['ECE_before']:.4f} -> {calibration['ECE_after']:.4f}"
    return f"{line}, {calibration.get('source', '')}"


def run(args: argparse.Namespace) -> int:
    """`ser train`: fit one fold; print the selected epoch, the scores and what it wrote."""
    from ser_model.model_card import MODEL_CARD_FILE
    from ser_model.train import fit
    from ser_model.warm_start import InitModel

    corpus, root, ingested = corpus_data(args)
    config = train_config(corpus, args.backbone, args.config, args.epochs, args.set, args.preset)
    out = Path(args.out or f"runs/{corpus}/{fold_folder_name(args.fold)}")
    init = InitModel(Path(args.init), args.init_source) if args.init else None
    result = fit(
        config, ingested.manifest, ingested.folds, args.fold, root, out, resume=not args.no_resume, init=init
    )
    print(f"{corpus} fold {args.fold}, selected epoch {result.selected_epoch}: {result.selection_rule}")
    if init is not None:
        print(init_line(read_result(out)["init"]))
    if result.valid:
        print(metrics_line("valid", result.valid))
    if result.test:
        print(metrics_line("test", result.test))
    if result.calibration:
        print(calibration_line(result.calibration))
    print(f"wrote {out / BEST_FOLDER} (its {MODEL_CARD_FILE}), {out / RESULT_FILE}, {out / METRICS_FILE}")
    return 0


def init_line(record: dict) -> str:
    """'started from models:/ser-ravdess/7: copied backbone, flam; new head (the classes differ: …)'."""
    head = "head copied" if record["head"] == "copied" else f"new head ({record['head_reason']})"
    return f"started from {record['source']}: copied {', '.join(record['copied'])}; {head}"
