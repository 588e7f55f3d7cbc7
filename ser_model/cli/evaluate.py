"""`ser evaluate --model M (--manifest DIR | --corpus C --root DIR) --fold K [--split test|valid|train]`,
or ``--split all`` (every utterance, no folds), or ``--segments`` (the split's utterances joined
into long recordings and scored in segments): the metrics of a trained model."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from data_contracts.labels import LABELS
from ser_model.cli.arguments import MODEL_HELP, add_corpus_data, corpus_data, metrics_line, segment_config
from ser_model.cli.hooks import ModelSourceError
from ser_model.config_validation import ConfigError
from ser_model.errors import DataSplitError
from ser_model.launch import RELEASE_FOLD

ALL_SPLIT = "all"


def add_parser(commands) -> None:
    """`ser evaluate` and its arguments."""
    evaluate = commands.add_parser(
        "evaluate",
        help="metrics of a trained model on one fold's held-out speakers, or on every utterance of a root",
    )
    evaluate.add_argument("--model", required=True, help=MODEL_HELP)
    add_corpus_data(evaluate)
    evaluate.add_argument(
        "--fold", type=int, help="fold whose speakers to score (required unless --split all)"
    )
    evaluate.add_argument(
        "--split",
        choices=("test", "valid", "train", ALL_SPLIT),
        default="test",
        help="speakers of --fold to score, or 'all': every utterance of the root, no folds needed (a held-out set)",
    )
    evaluate.add_argument("--batch-size", type=int, default=16)
    evaluate.add_argument("--json", help="also write the metrics (confusion, per-class recall) to this file")
    _add_segment_arguments(evaluate)
    evaluate.add_argument(
        "--mlflow-experiment",
        metavar="NAME",
        help="also log the evaluation as a run of this MLflow experiment (MLFLOW_TRACKING_URI; the ser console script)",
    )
    evaluate.set_defaults(handler=run)


def _add_segment_arguments(evaluate: argparse.ArgumentParser) -> None:
    """``--segments`` and how the joined recordings are built and segmented."""
    segments = evaluate.add_argument_group(
        "segments", "long recordings: the split's utterances joined with gaps, scored in segments"
    )
    segments.add_argument(
        "--segments",
        action="store_true",
        help="score joined recordings in segments against the utterances one by one",
    )
    segments.add_argument(
        "--gap",
        choices=("silence", "noise"),
        default="silence",
        help="what fills the gaps (noise: 35 dB under the speech)",
    )
    segments.add_argument("--gap-s", type=float, default=1.5, help="seconds between utterances")
    segments.add_argument("--per-recording", type=int, default=8, help="utterances per joined recording")
    segments.add_argument(
        "--segment-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a segmentation setting, e.g. window_s=6",
    )


def run(args: argparse.Namespace) -> int:
    """`ser evaluate`: score the split (or every utterance) whole or in segments; print, write and log the metrics."""
    if args.split == ALL_SPLIT and args.fold is not None:
        raise DataSplitError(
            f"ser evaluate --split all --fold {args.fold}: --split all scores every utterance of the root; drop --fold"
        )
    if args.split != ALL_SPLIT and args.fold is None:
        raise DataSplitError(
            f"ser evaluate --split {args.split}: needs --fold K (or --split all to score every utterance)"
        )
    from ser_model.ensemble import load_model
    from ser_model.evaluation import evaluate_rows

    model = load_model(args.model)
    corpus, root, ingested = corpus_data(args)
    if tuple(model.labels) != LABELS[corpus]:
        raise ConfigError(
            f"{args.model}: the model's classes {list(model.labels)} are not {corpus}'s {list(LABELS[corpus])}"
        )
    rows, what = _rows_to_score(model, corpus, root, ingested, args)
    speakers = ", ".join(sorted(rows["speaker"].unique()))
    params = {
        "model": args.model_source,
        "corpus": corpus,
        "fold": args.fold,
        "split": args.split,
        "speakers": speakers,
    }
    if args.segments:
        metrics = evaluate_segments(model, rows, root, args)
        params |= {
            "segments.gap": args.gap,
            "segments.gap_s": args.gap_s,
            "segments.per_recording": args.per_recording,
        }
        params |= {f"segments.{k}": v for k, v in metrics["segment_config"].items()}
    else:
        metrics = evaluate_rows(model, rows, root, batch_size=args.batch_size)
        print(metrics_line(f"{what} ({speakers})", metrics))
    if args.json:
        Path(args.json).write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    if args.mlflow_experiment:
        if args.evaluation_logger is None:
            raise ModelSourceError(
                "ser evaluate --mlflow-experiment: logging needs the `ser` console script (flows.cli), which knows MLflow"
            )
        run_name = f"evaluate{'-segments' if args.segments else ''} {what}"
        print(f"logged to {args.evaluation_logger(args.mlflow_experiment, run_name, params, metrics)}")
    return 0


def _rows_to_score(model, corpus: str, root: str, ingested, args: argparse.Namespace):
    """``(rows, what)``: the manifest rows ``--split`` (of ``--fold``) names, and how to name them;
    none to score raises DataSplitError."""
    from ser_model.train import training_splits

    if args.split == ALL_SPLIT:
        rows, what = ingested.manifest, f"{corpus} all utterances of {root}"
    else:
        rows, what = (
            training_splits(
                ingested.manifest, ingested.folds, args.fold, holdout=model.config.train.release_holdout
            )[args.split],
            f"{corpus} fold {args.fold} {args.split}",
        )
    if rows.empty:
        trained_on_all = args.fold == RELEASE_FOLD and not model.config.train.release_holdout
        raise DataSplitError(
            f"{what}: no utterances to score"
            + ("; this release model trained on every speaker, none was held out" if trained_on_all else "")
        )
    return rows, what


def evaluate_segments(model, rows, root: str, args: argparse.Namespace) -> dict[str, Any]:
    """`ser evaluate --segments`: the rows' utterances joined into long recordings with known
    boundaries (ser_model.joined), scored in segments and one by one; prints the comparison."""
    from ser_model.inference import Predictor
    from ser_model.joined import build_joined, score_joined

    predictor = Predictor(model)
    config = segment_config(args.segment_set)
    items = [(str(Path(root) / r.path), predictor.labels.index(r.label), r.utt_id) for r in rows.itertuples()]
    recordings = build_joined(
        items, predictor.sample_rate, per_recording=args.per_recording, gap_s=args.gap_s, gap=args.gap
    )
    result = score_joined(recordings, predictor, predictor.probabilities, config) | {
        "segment_config": config.to_dict()
    }
    print(
        f"{result['recordings']} recordings of {args.per_recording} utterances, {args.gap_s:g} s gaps of {args.gap} "
        f"({result['audio_s'] / 60:.1f} min): segment UA {100 * result['segment']['UA']:.2f}% (by duration), "
        f"per-utterance UA {100 * result['utterance']['UA']:.2f}% (by duration {100 * result['utterance_duration_weighted']['UA']:.2f}%), "
        f"median boundary error {result['boundary_error_s']['median']:.3f} s, "
        f"{result['segments_per_recording']['mean']:.1f} segments per recording"
    )
    return result
