"""`ser predict FILE... --model M [--json] [--speaker NAME] [--min-confidence P]`: the emotion of each file
(calibrated probabilities, its ``confidence``, "uncertain" below P); with
``--segments`` (``[--json | --csv] [--plot PNG] [--segment-set key=value ...]``) an emotion per
segment of long recordings, from a checkpoint folder or an exported ONNX graph."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ser_model.cli.arguments import MODEL_HELP, segment_config
from ser_model.cli.hooks import ModelSourceError
from ser_model.cli.progress import audio_progress_bar
from ser_model.config_validation import ConfigError
from ser_model.launch import BAD_CONFIG_EXIT


def add_parser(commands) -> None:
    """`ser predict` and its arguments."""
    predict = commands.add_parser("predict", help="emotion of audio files (any rate, channels, length)")
    predict.add_argument("files", nargs="+")
    predict.add_argument("--model", required=True, help=MODEL_HELP)
    predict.add_argument(
        "--speaker",
        metavar="NAME",
        help="all FILEs are of this one speaker: a model trained with model.fbank_norm=speaker normalises them by "
        "their log-mel statistics together (it needs this; other models ignore it)",
    )
    predict.add_argument(
        "--window-seconds",
        type=float,
        help="longer inputs are cut into windows of this length (default 60: the whole utterance, as in evaluation)",
    )
    predict.add_argument(
        "--min-confidence",
        type=min_confidence,
        default=0.0,
        metavar="P",
        help="label an answer 'uncertain' when its calibrated top probability is below P (in [0, 1]; default 0: never); "
        "its probabilities stay in the record. The registered model's description gives P for target accuracies",
    )
    formats = predict.add_mutually_exclusive_group()
    formats.add_argument(
        "--json", action="store_true", help="one JSON object per file (per segment with --segments)"
    )
    formats.add_argument(
        "--csv", action="store_true", help="with --segments: CSV on stdout, a header and one row per segment"
    )
    predict.add_argument(
        "--segments",
        action="store_true",
        help="long recordings: voice-activity detection, then an emotion per segment with start_s, end_s, label and p_<class> "
        "(the file is read in blocks; --model may also be an exported .onnx file)",
    )
    predict.add_argument(
        "--plot",
        metavar="PNG",
        help="with --segments: draw the timeline of each file (emotion and confidence over time)",
    )
    predict.add_argument(
        "--segment-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="with --segments: a segmentation setting (ser_model/segments.py SegmentConfig), e.g. window_s=6 or min_silence_s=0.3",
    )
    predict.set_defaults(handler=run)


def min_confidence(text: str) -> float:
    """``--min-confidence``: a probability in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"got {text!r}, expected a probability in [0, 1]")
    return value


def run(args: argparse.Namespace) -> int:
    """`ser predict`: a line (or a JSON object) per file; with --segments, one per segment."""
    from ser_model.inference import Predictor

    if args.segments:
        if args.window_seconds is not None:
            raise ConfigError(
                "ser predict --segments: --window-seconds sets the whole-file window; use --segment-set window_s=S"
            )
        return run_segments(args)
    for flag, value in (("--csv", args.csv), ("--plot", args.plot), ("--segment-set", args.segment_set)):
        if value:
            raise ConfigError(f"ser predict {flag}: needs --segments (one record per segment of each file)")
    if args.model.endswith(".onnx"):
        raise ConfigError(
            f"ser predict --model {args.model}: an ONNX graph scores windows of segments; add --segments, or give a checkpoint folder"
        )
    predictor = Predictor.from_pretrained(args.model, window_seconds=args.window_seconds)
    speakers = None if args.speaker is None else [args.speaker] * len(args.files)
    predictions = predictor.predict_files(args.files, speakers, args.min_confidence)
    for path, prediction in zip(args.files, predictions):
        if args.json:
            print(json.dumps({"file": path, **prediction}))
        else:
            probabilities = " ".join(f"{label}={p:.3f}" for label, p in prediction["probabilities"].items())
            print(
                f"{path}\t{prediction['label']}\tconfidence={prediction['confidence']:.3f}\t{probabilities}"
            )
    return 0


def run_segments(args: argparse.Namespace) -> int:
    """`ser predict --segments`: one record per segment of each file, as text, JSON lines or CSV,
    and the timeline picture with --plot."""
    import csv

    from ser_model.segments import FileSource, probability_column, segment_recording, segment_records
    from ser_model.timeline import Track, save_timeline

    if args.speaker is not None:
        raise ConfigError(
            "ser predict --speaker: segments are scored window by window without speaker statistics; drop --segments or --speaker"
        )
    config = segment_config(args.segment_set)
    scorer = segment_scorer(args.model)
    labels = list(scorer.labels)
    writer = None
    if args.csv:
        fields = ["file", "start_s", "end_s", "label", "confidence"] + [probability_column(c) for c in labels]
        writer = csv.DictWriter(sys.stdout, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
    tracks = []
    for path in args.files:
        with FileSource(path) as source:
            duration = source.frames / source.sample_rate
            segments = segment_recording(
                source, scorer, config, progress=audio_progress_bar(2 * duration, Path(path).name)
            )
        tracks.append(Track(Path(path).name, segments, duration))
        for record in segment_records(segments, labels, args.min_confidence):
            if args.json:
                print(json.dumps({"file": path, **record}))
            elif writer is not None:
                writer.writerow({"file": path, **record})
            else:
                probabilities = " ".join(f"{c}={record[probability_column(c)]:.3f}" for c in labels)
                print(
                    f"{path}\t{record['start_s']:.2f}-{record['end_s']:.2f}\t{record['label']}\t{probabilities}"
                )
        sys.stdout.flush()
    if args.plot:
        try:
            save_timeline(args.plot, tracks, labels)
        except OSError as err:
            print(f"ser predict: error: cannot write the timeline to {args.plot}: {err}", file=sys.stderr)
            return BAD_CONFIG_EXIT
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0


def segment_scorer(model: str):
    """The WindowScorer of ``--model``: an exported ``.onnx`` file (ONNX Runtime), else a checkpoint folder."""
    if model.endswith(".onnx"):
        from ser_model.export import OnnxExportError, OnnxScorer

        try:
            return OnnxScorer(model)
        except OnnxExportError as err:
            raise ModelSourceError(str(err)) from err
    from ser_model.inference import Predictor

    predictor = Predictor.from_pretrained(model)
    if predictor.uses_speakers:
        raise ConfigError(
            f"--model {model}: trained with speaker-level normalisation (model.fbank_norm='speaker'), which needs "
            "each speaker's statistics; segments are not scored that way. Score whole files with `ser predict --speaker NAME`"
        )
    return predictor
