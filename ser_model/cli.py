"""The `ser` command line: one argparse tree for every command.

    ser ingest CORPUS ROOT --out DIR [--workers N] [--no-progress]
    ser train (--manifest DIR | --corpus C --root DIR) --fold K [--preset P|FILE] [--backbone B] [--epochs N] [--out DIR] [--config F] [--set key=value ...]
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

`monitor` scores a model (the champion) on the rows of `--manifest DIR` that are not in
`--reference DIR` (the `ser ingest` folder of the data it trained on), measures drift and prints a
short report (ser_model/monitor.py); the champion's fold-mean UA comes from `--fold-mean-ua`, or
from the registry for a ``models:/`` model (a ``FoldMeanUA`` given to `main`).

``--model`` takes a checkpoint folder, or a URI that a resolver given to `main` turns into one:
the `ser` console script (`flows.cli`) registers the MLflow registry's ``models:/NAME@ALIAS`` and
``models:/NAME/VERSION``; ser_model itself knows no registry.

Exit codes, the fold-launch contract's constants (``ser_model.launch``), with the message on stderr
and no traceback: 0 done; ``BAD_CONFIG_EXIT`` (2) any bad input the user can fix: a command line
argparse refuses (it exits 2 itself), a configuration, a manifest folder or corpus root that fails
its checks, an audio file that is missing or cannot be decoded, a ``--model`` that cannot be found or
fetched, an output folder that cannot be written. ``BAD_DATA_EXIT`` (3) is the worker's alone: the
CLI does not tell bad data from bad arguments, every bad input exits 2.

Start-up: this module imports no torch, pandas or audio library; each command imports what it
needs when it runs, so `ser --help` answers at once and `ser ingest` never loads torch.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from data_contracts.errors import DataContractError
from data_contracts.labels import CORPORA, LABELS
from ser_model.allocator import restart_with_heap_env
from ser_model.config import SERConfig
from ser_model.config_validation import ConfigError
from ser_model.errors import AudioDecodeError, DataSplitError, MissingSpeakersError
from ser_model.launch import (
    BAD_CONFIG_EXIT,
    BEST_FOLDER,
    CHECKPOINT_FILES,
    METRICS_FILE,
    RELEASE_FOLD,
    RESULT_FILE,
    fold_folder_name,
)
from ser_model.metrics import DEFAULT_UA_MARGIN
from ser_model.presets import DEFAULT_PRESET, PRESETS, experiment_config
from ser_stack.names import study_name

__all__ = [
    "main",
    "build_parser",
    "parse_overrides",
    "train_config",
    "metrics_line",
    "ModelResolver",
    "ModelSourceError",
    "EvaluationLogger",
    "FoldMeanUA",
]

MODEL_HELP = (
    f"checkpoint folder ({CHECKPOINT_FILES}), or a registered model "
    "models:/NAME@ALIAS or models:/NAME/VERSION, e.g. models:/ser-ravdess@champion (MLflow server from MLFLOW_TRACKING_URI)"
)
ALL_SPLIT = "all"
HEAP_BOUND_COMMANDS = ("train", "tune")
"""Commands that train in this process: started from a shell, they restart with the heap policy's
settings (ser_model/allocator.py `restart_with_heap_env`)."""
DEFAULT_TUNE_PRESET = DEFAULT_PRESET
URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:/")

TunerTrackerFactory = Callable[..., Any]
"""``(corpus=, study=, base_config=, space=, tune_folds=, trials=, root=, fingerprint=) -> tracker``:
what follows a `ser tune` study (the `ser` console script gives one that logs to MLflow, flows/tune.py);
the tracker has ``trial_started(trial, config)``, ``epoch(trial, fold, epoch, record)``,
``trial_finished(study, frozen_trial)`` and ``finish(study, preset_path)``."""

EvaluationLogger = Callable[[str, str, dict[str, Any], dict[str, Any]], str]
"""``(experiment, run name, params, metrics) -> where it was logged``: records an evaluation (the
console script logs it to MLflow; ser_model knows no tracking server)."""

ModelResolver = Callable[[str, Path], Path]
"""``(uri, scratch folder) -> checkpoint folder``: fetches the model a ``--model`` URI names into
the scratch folder (deleted when the command ends); raises ModelSourceError when it cannot."""


FoldMeanUA = Callable[[str], float | None]
"""``(models:/ URI) -> fold-mean UA``: the cross-validated score a registry records for a model
(the console script reads the MLflow registry; ser_model knows none), or None when not recorded."""


class ModelSourceError(Exception):
    """A ``--model`` URI cannot be turned into a checkpoint folder (no resolver for it, not found, unreachable)."""


BAD_INPUT_ERRORS = (
    DataContractError,
    ConfigError,
    DataSplitError,
    AudioDecodeError,
    ModelSourceError,
    MissingSpeakersError,
    FileNotFoundError,
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


def metrics_line(name: str, metrics: dict[str, Any]) -> str:
    """'test: WA 61.25% UA 60.80% macro-F1 60.11% (n=240)'."""
    return f"{name}: WA {100 * metrics['WA']:.2f}% UA {100 * metrics['UA']:.2f}% macro-F1 {100 * metrics['macro_f1']:.2f}% (n={metrics['n']})"


def _local_root(root: str) -> str:
    if "://" in root:
        raise DataSplitError(
            f"--root {root}: training and evaluation read audio from a local folder; got a URL"
        )
    return root


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
        return corpus, _local_root(args.root or ingested.report["root"]), ingested
    if not (args.corpus and args.root):
        raise DataSplitError(
            f"{command}: give --manifest DIR (written by ser ingest) or both --corpus and --root"
        )
    return (
        args.corpus,
        _local_root(args.root),
        run_ingest(args.corpus, _local_root(args.root), progress=False),
    )


def run_ingest_command(args: argparse.Namespace) -> int:
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


def run_train(args: argparse.Namespace) -> int:
    from ser_model.train import fit

    corpus, root, ingested = corpus_data(args)
    config = train_config(corpus, args.backbone, args.config, args.epochs, args.set, args.preset)
    out = Path(args.out or f"runs/{corpus}/{fold_folder_name(args.fold)}")
    result = fit(config, ingested.manifest, ingested.folds, args.fold, root, out, resume=not args.no_resume)
    print(f"{corpus} fold {args.fold}, selected epoch {result.selected_epoch}: {result.selection_rule}")
    if result.valid:
        print(metrics_line("valid", result.valid))
    if result.test:
        print(metrics_line("test", result.test))
    print(f"wrote {out / BEST_FOLDER}, {out / RESULT_FILE}, {out / METRICS_FILE}")
    return 0


def _fold_list(text: str) -> list[int]:
    try:
        folds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected fold numbers like 0,1") from None
    if not folds:
        raise argparse.ArgumentTypeError(f"{text!r}: expected at least one fold number")
    return sorted(set(folds))


def run_tune(args: argparse.Namespace) -> int:
    """`ser tune`: an Optuna study (ser_model.tuning) on validation speakers; writes the best trial as a
    preset file. ``args.tune_tracker`` (a TunerTrackerFactory, from `main`) follows the study."""
    tracker_factory: TunerTrackerFactory | None = getattr(args, "tune_tracker", None)
    import optuna

    from ser_model.presets import split_preset, write_preset_file
    from ser_model.tuning import (
        DONE_STATES,
        TuningObjective,
        best_preset,
        enqueue_base,
        load_search_space,
        open_study,
        worker_seed,
    )

    optuna.logging.set_verbosity(
        optuna.logging.DEBUG if args.verbose else optuna.logging.WARNING
    )  # one line per trial below
    corpus, root, ingested = corpus_data(args)
    preset = args.preset or DEFAULT_TUNE_PRESET
    fixed = parse_overrides(args.set)
    if args.epochs is not None:
        fixed = {"train.epochs": args.epochs, **fixed}
    base = experiment_config(corpus, preset, overrides=fixed)
    extends, own = split_preset(preset)
    space = load_search_space(args.space or extends, base)
    out = Path(args.out or f"runs/{corpus}/tune")
    name = args.study or study_name(corpus)
    out.mkdir(parents=True, exist_ok=True)
    storage = args.storage or f"sqlite:///{(out / 'study.db').resolve()}"
    study = open_study(name, storage, seed=worker_seed(args.seed), grace_period_s=args.heartbeat_grace)
    enqueue_base(study, space, base)
    tracker = None
    if tracker_factory is not None:
        tracker = tracker_factory(
            corpus=corpus,
            study=study,
            base_config=base,
            space=space,
            tune_folds=args.folds,
            trials=args.trials,
            root=root,
            fingerprint=ingested.fingerprint,
        )
    objective = TuningObjective(
        base,
        space,
        ingested.manifest,
        ingested.folds,
        args.folds,
        root,
        out / name,
        on_trial_start=tracker.trial_started if tracker else None,
        on_epoch=tracker.epoch if tracker else None,
    )
    done = lambda: sum(t.state in DONE_STATES for t in study.trials)  # noqa: E731
    print(
        f"study {name} in {storage}: {done()} of {args.trials} trials done; space {sorted(space)}; folds {args.folds}"
    )
    callbacks = [tracker.trial_finished] if tracker else []
    while done() < args.trials:
        study.optimize(objective, n_trials=1, callbacks=callbacks)
        last = study.trials[-1]
        value = "" if last.value is None else f" value {last.value:.4f}"
        print(f"trial {last.number}: {last.state.name}{value} {json.dumps(last.params)}")
    preset_path = Path(args.preset_out or out / f"{name}-best.json")
    write_preset_file(preset_path, best_preset(study, extends, {**own, **fixed}, corpus=corpus))
    if tracker is not None:
        tracker.finish(study, preset_path)
    best = study.best_trial
    print(f"best trial {best.number}: mean valid UA {100 * best.value:.2f}% {json.dumps(best.params)}")
    print(f"wrote {preset_path}; train with: ser train --preset {preset_path} --fold K ...")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    if args.split == ALL_SPLIT and args.fold is not None:
        raise DataSplitError(
            f"ser evaluate --split all --fold {args.fold}: --split all scores every utterance of the root; drop --fold"
        )
    if args.split != ALL_SPLIT and args.fold is None:
        raise DataSplitError(
            f"ser evaluate --split {args.split}: needs --fold K (or --split all to score every utterance)"
        )
    from ser_model.ensemble import load_model
    from ser_model.train import evaluate_rows, training_splits

    model = load_model(args.model)
    corpus, root, ingested = corpus_data(args)
    if tuple(model.labels) != LABELS[corpus]:
        raise ConfigError(
            f"{args.model}: the model's classes {list(model.labels)} are not {corpus}'s {list(LABELS[corpus])}"
        )
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


def segment_config(sets: Sequence[str]):
    """The SegmentConfig of ``--segment-set key=value`` items on top of the defaults."""
    from ser_model.segments import SegmentConfig

    return SegmentConfig().with_overrides(parse_overrides(sets, flag="--segment-set", example="window_s=6"))


def _progress_bar(total_s: float, what: str) -> Callable[[float], None] | None:
    """A progress bar over seconds of audio on a terminal (stderr), else None."""
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    bar = tqdm(
        total=round(total_s, 1),
        unit="s",
        desc=what,
        leave=False,
        bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s audio",
    )
    return lambda seconds: bar.update(seconds)


def run_predict_segments(args: argparse.Namespace) -> int:
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
        fields = ["file", "start_s", "end_s", "label"] + [probability_column(c) for c in labels]
        writer = csv.DictWriter(sys.stdout, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
    tracks = []
    for path in args.files:
        with FileSource(path) as source:
            duration = source.frames / source.sample_rate
            segments = segment_recording(
                source, scorer, config, progress=_progress_bar(2 * duration, Path(path).name)
            )
        tracks.append(Track(Path(path).name, segments, duration))
        for record in segment_records(segments, labels):
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


def run_predict(args: argparse.Namespace) -> int:
    from ser_model.inference import Predictor

    if args.segments:
        if args.window_seconds is not None:
            raise ConfigError(
                "ser predict --segments: --window-seconds sets the whole-file window; use --segment-set window_s=S"
            )
        return run_predict_segments(args)
    for flag, value in (("--csv", args.csv), ("--plot", args.plot), ("--segment-set", args.segment_set)):
        if value:
            raise ConfigError(f"ser predict {flag}: needs --segments (one record per segment of each file)")
    if args.model.endswith(".onnx"):
        raise ConfigError(
            f"ser predict --model {args.model}: an ONNX graph scores windows of segments; add --segments, or give a checkpoint folder"
        )
    predictor = Predictor.from_pretrained(args.model, window_seconds=args.window_seconds)
    speakers = None if args.speaker is None else [args.speaker] * len(args.files)
    predictions = predictor.predict_files(args.files, speakers)
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
    print(
        f"wrote {path} (inputs waves (B, L) float32 at the model rate, lengths (B,) int64; outputs logits, probabilities)"
    )
    return 0


def run_monitor(args: argparse.Namespace) -> int:
    """`ser monitor`: the champion on new data (ser_model.monitor.watch_champion), as a short report."""
    from data_contracts.ingest import read_ingest_outputs
    from ser_model.ensemble import load_model
    from ser_model.monitor import watch_champion

    new, reference = read_ingest_outputs(args.manifest), read_ingest_outputs(args.reference)
    corpus = new.report["corpus"]
    if reference.report["corpus"] != corpus:
        raise ConfigError(
            f"ser monitor: --manifest {args.manifest} holds {corpus} but --reference {args.reference} holds "
            f"{reference.report['corpus']}; expected the same corpus"
        )
    model = load_model(args.model)
    if tuple(model.labels) != LABELS[corpus]:
        raise ConfigError(
            f"{args.model_source}: the model's classes {list(model.labels)} are not {corpus}'s {list(LABELS[corpus])}"
        )
    ua_mean = args.fold_mean_ua
    fold_mean_ua: FoldMeanUA | None = getattr(args, "fold_mean_ua_source", None)
    if ua_mean is None and fold_mean_ua is not None and args.model_source != args.model:
        ua_mean = fold_mean_ua(args.model_source)
    result = watch_champion(
        model,
        new.manifest,
        _local_root(args.root or new.report["root"]),
        reference.manifest,
        reference.folds,
        _local_root(args.reference_root or reference.report["root"]),
        champion_ua_mean=ua_mean,
        margin=args.margin,
        batch_size=args.batch_size,
    )
    print(f"{args.model_source} on {corpus} {args.manifest} against {args.reference}:")
    for line in result.report_lines():
        print(f"  {line}")
    if args.json:
        report = {
            "verdict": result.verdict(),
            "degraded": result.degraded,
            **result.flat_metrics(),
            "metrics": result.metrics,
        }
        try:
            Path(args.json).write_text(json.dumps(report, indent=2), encoding="utf-8")
        except OSError as err:
            print(f"ser monitor: error: cannot write {args.json}: {err}", file=sys.stderr)
            return BAD_CONFIG_EXIT
    return 0


def _margin(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"--margin must be >= 0 (absolute UA), got {text}")
    return value


def _workers(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"--workers must be >= 1, got {value}")
    return value


def _add_corpus_data(parser: argparse.ArgumentParser) -> None:
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ser", description="Speech emotion recognition: ingest, train, evaluate, predict, export."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

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
    ingest.set_defaults(handler=run_ingest_command)

    train = commands.add_parser("train", help="train one fold (or the release model) of a corpus")
    _add_corpus_data(train)
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
        "--no-resume", action="store_true", help="start afresh even if the output folder holds a checkpoint"
    )
    train.set_defaults(handler=run_train)

    tune = commands.add_parser(
        "tune",
        help="search a recipe with an Optuna study on validation speakers; write the best as a preset file",
        description="Each trial trains --folds (on their training speakers) and is judged by the mean best validation UA "
        "on their validation speakers; test speakers are never scored. The study is stored (--storage, default a SQLite "
        "file in --out), so running the same command again resumes it; --trials is the total number of finished trials.",
    )
    _add_corpus_data(tune)
    tune.add_argument(
        "--preset", metavar="NAME|FILE", help=f"recipe the trials start from (default {DEFAULT_TUNE_PRESET})"
    )
    tune.add_argument(
        "--space",
        metavar="NAME|FILE",
        help="search space: a shipped one (the preset's, by default) or a JSON file",
    )
    tune.add_argument(
        "--trials", type=int, default=20, help="finished (complete or pruned) trials to reach (default 20)"
    )
    tune.add_argument("--epochs", type=int, help="epochs of each trial's folds (default: the preset's)")
    tune.add_argument(
        "--folds",
        type=_fold_list,
        default=[0, 1],
        help="folds whose validation speakers judge a trial (default 0,1)",
    )
    tune.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="fixed config override for every trial (repeatable)",
    )
    tune.add_argument("--study", help="study name (default ser-<corpus>-tune)")
    tune.add_argument("--storage", help="Optuna storage URL (default sqlite:///<out>/study.db)")
    tune.add_argument("--out", help="trial folders and the study file (default runs/<corpus>/tune)")
    tune.add_argument(
        "--preset-out",
        metavar="FILE",
        help="where to write the best trial's preset file (default <out>/<study>-best.json)",
    )
    tune.add_argument(
        "--seed", type=int, default=0, help="seed of the sampler, mixed with the process id (default 0)"
    )
    tune.add_argument(
        "--heartbeat-grace",
        type=float,
        default=120.0,
        metavar="S",
        help="a running trial silent for this long is taken as killed and retried with its parameters (default 120)",
    )
    tune.set_defaults(handler=run_tune)

    evaluate = commands.add_parser(
        "evaluate",
        help="metrics of a trained model on one fold's held-out speakers, or on every utterance of a root",
    )
    evaluate.add_argument("--model", required=True, help=MODEL_HELP)
    _add_corpus_data(evaluate)
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
    evaluate.add_argument(
        "--mlflow-experiment",
        metavar="NAME",
        help="also log the evaluation as a run of this MLflow experiment (MLFLOW_TRACKING_URI; the ser console script)",
    )
    evaluate.set_defaults(handler=run_evaluate)

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
    predict.set_defaults(handler=run_predict)

    monitor = commands.add_parser(
        "monitor",
        help="score a model on the utterances it never trained on and measure drift against its training data",
        description="New rows are those of --manifest whose audio sha256 is not in --reference (a renamed copy is not "
        "new). Drift: KS statistic for duration and loudness, total variation for sample rate, channels, class, speaker "
        "and the model's predicted classes (against its predictions on the release model's validation speakers).",
    )
    monitor.add_argument("--model", required=True, help=MODEL_HELP)
    monitor.add_argument(
        "--manifest",
        required=True,
        metavar="DIR",
        help="ser ingest folder of the data now (the new rows among them)",
    )
    monitor.add_argument(
        "--reference",
        required=True,
        metavar="DIR",
        help="ser ingest folder of the data the model was trained on",
    )
    monitor.add_argument("--root", help="where --manifest's audio is now, if it moved")
    monitor.add_argument("--reference-root", help="where --reference's audio is now, if it moved")
    monitor.add_argument(
        "--fold-mean-ua",
        type=float,
        help="the model's cross-validated fold-mean UA to compare with (default: the registry's, for models:/)",
    )
    monitor.add_argument(
        "--margin",
        type=_margin,
        default=DEFAULT_UA_MARGIN,
        help=f"flag the model when its UA on new rows is more than this below its fold mean (default {DEFAULT_UA_MARGIN})",
    )
    monitor.add_argument("--batch-size", type=int, default=16)
    monitor.add_argument(
        "--json", metavar="FILE", help="also write the report (metrics, drift, verdict) to this file"
    )
    monitor.set_defaults(handler=run_monitor)

    export = commands.add_parser("export", help="export a checkpoint folder")
    export.add_argument("--onnx", action="store_true", help="ONNX with dynamic batch and time axes")
    export.add_argument("--model", required=True, help=MODEL_HELP)
    export.add_argument("--out", required=True, help="output .onnx file")
    export.set_defaults(handler=run_export)
    return parser


def resolve_model(value: str, resolvers: Mapping[str, ModelResolver], scratch: contextlib.ExitStack) -> str:
    """The checkpoint folder a ``--model`` value names: the value itself when it is not a URI,
    else what the resolver registered for its prefix fetched into a scratch folder that lives as
    long as `scratch`. A URI no resolver handles raises ModelSourceError naming the known prefixes."""
    for prefix, resolver in resolvers.items():
        if value.startswith(prefix):
            folder = scratch.enter_context(tempfile.TemporaryDirectory(prefix="ser-model-"))
            return str(resolver(value, Path(folder)))
    if URI.match(value):
        known = ", ".join(resolvers) or "none here; the `ser` console script resolves models:/"
        raise ModelSourceError(
            f"--model {value}: no resolver for this URI (known: {known}); give a checkpoint folder"
        )
    return value


def main(
    argv: Sequence[str] | None = None,
    resolvers: Mapping[str, ModelResolver] | None = None,
    tune_tracker: TunerTrackerFactory | None = None,
    evaluation_logger: EvaluationLogger | None = None,
    fold_mean_ua: FoldMeanUA | None = None,
) -> int:
    """Run one `ser` command line; `resolvers` maps a ``--model`` URI prefix (``models:/``) to
    the function that fetches such a model (see ModelResolver); `tune_tracker` follows `ser tune`
    studies (see TunerTrackerFactory); `evaluation_logger` records ``ser evaluate
    --mlflow-experiment`` runs; `fold_mean_ua` tells `ser monitor` a registered model's fold-mean UA.
    Returns the exit code."""
    args = build_parser().parse_args(argv)
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
            if getattr(args, "model", None):
                args.model_source = args.model
                args.model = resolve_model(args.model, resolvers or {}, scratch)
            return args.handler(args)
    except BAD_INPUT_ERRORS as err:
        print(f"ser {args.command}: error: {err}", file=sys.stderr)
        return BAD_CONFIG_EXIT


if __name__ == "__main__":
    sys.exit(main())
