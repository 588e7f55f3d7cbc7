"""`ser tune (--manifest DIR | --corpus C --root DIR) [--preset P|FILE] [--space NAME|FILE] [--trials N]
[--epochs N] [--folds 0,1] [--set key=value ...]`: an Optuna study on validation speakers, its
trials run one after another in this process (``ser_model.tuning.driver.StudyDriver``); the best
trial becomes a preset file. Every default is ``StudySettings``'."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from ser_model.cli.arguments import add_corpus_data, corpus_data, parse_overrides
from ser_model.tuning.settings import StudySettings
from ser_stack.names import study_name


def _fold_list(text: str) -> list[int]:
    try:
        folds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected fold numbers like 0,1") from None
    if not folds:
        raise argparse.ArgumentTypeError(f"{text!r}: expected at least one fold number")
    return sorted(set(folds))


def add_parser(commands) -> None:
    """`ser tune` and its arguments."""
    tune = commands.add_parser(
        "tune",
        help="search a recipe with an Optuna study on validation speakers; write the best as a preset file",
        description="Each trial trains --folds (on their training speakers) and is judged by the mean best validation UA "
        "on their validation speakers; test speakers are never scored. The study is stored (--storage, default a SQLite "
        "file in --out), so running the same command again resumes it; --trials is the total number of finished trials.",
    )
    add_corpus_data(tune)
    _add_recipe_arguments(tune)
    _add_study_arguments(tune)
    tune.set_defaults(handler=run)


def _add_recipe_arguments(tune: argparse.ArgumentParser) -> None:
    """What the trials train: the preset, the space, the budget, the folds, the fixed settings."""
    defaults = StudySettings
    tune.add_argument(
        "--preset",
        metavar="NAME|FILE",
        default=defaults.preset,
        help=f"recipe the trials start from (default {defaults.preset})",
    )
    tune.add_argument(
        "--space",
        metavar="NAME|FILE",
        help="search space: a shipped one (the preset's, by default) or a JSON file",
    )
    tune.add_argument(
        "--trials",
        type=int,
        default=defaults.trials,
        help=f"finished (complete or pruned) trials to reach (default {defaults.trials})",
    )
    tune.add_argument("--epochs", type=int, help="epochs of each trial's folds (default: the preset's)")
    tune.add_argument(
        "--folds",
        type=_fold_list,
        default=list(defaults.folds),
        help=f"folds whose validation speakers judge a trial (default {','.join(map(str, defaults.folds))})",
    )
    tune.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="fixed config override for every trial (repeatable)",
    )


def _add_study_arguments(tune: argparse.ArgumentParser) -> None:
    """Where the study and its outputs live, its seed and its heartbeat grace."""
    defaults = StudySettings
    tune.add_argument("--study", default="", help=f"study name (default {study_name('<corpus>')})")
    tune.add_argument("--storage", help="Optuna storage URL (default sqlite:///<out>/study.db)")
    tune.add_argument("--out", help="trial folders and the study file (default runs/<corpus>/tune)")
    tune.add_argument(
        "--preset-out",
        metavar="FILE",
        help="where to write the best trial's preset file (default <out>/<study>-best.json)",
    )
    tune.add_argument(
        "--seed",
        type=int,
        default=defaults.seed,
        help=f"seed of the sampler, mixed with the process id (default {defaults.seed})",
    )
    tune.add_argument(
        "--heartbeat-grace",
        type=float,
        default=defaults.grace_period_s,
        metavar="S",
        help="a running trial silent for this long is taken as killed and retried with its parameters "
        f"(default {defaults.grace_period_s:g})",
    )


def run(args: argparse.Namespace) -> int:
    """`ser tune`: the study of the command line, its trials in this process, one line each; the
    best trial's preset file. ``args.tune_tracker`` (a TunerTrackerFactory, from `main`) follows it."""
    import optuna

    from ser_model.tuning.driver import StudyDriver

    optuna.logging.set_verbosity(logging.DEBUG if args.verbose else logging.WARNING)  # a line per trial below
    corpus, root, ingested = corpus_data(args)
    out = Path(args.out or f"runs/{corpus}/tune")
    settings = StudySettings(
        corpus=corpus,
        storage=args.storage or f"sqlite:///{(out / 'study.db').resolve()}",
        name=args.study,
        preset=args.preset,
        space=args.space,
        epochs=args.epochs,
        overrides=parse_overrides(args.set),
        trials=args.trials,
        folds=args.folds,
        grace_period_s=args.heartbeat_grace,
        seed=args.seed,
    )
    out.mkdir(parents=True, exist_ok=True)
    driver = StudyDriver(settings)
    if args.tune_tracker is not None:
        driver.tracker = args.tune_tracker(driver, root=root, fingerprint=ingested.fingerprint)
    objective = driver.objective(ingested.manifest, ingested.folds, root, out / settings.name)
    print(
        f"study {settings.name} in {settings.storage}: {driver.finished()} of {settings.trials} trials done; "
        f"space {sorted(driver.recipe.space)}; folds {list(settings.folds)}"
    )
    driver.run(driver.trials_here(objective, _print_trial))
    preset_path = driver.write_best_preset(args.preset_out or driver.best_preset_file(out))
    best = driver.study.best_trial
    print(f"best trial {best.number}: mean valid UA {100 * best.value:.2f}% {json.dumps(best.params)}")
    print(f"wrote {preset_path}; train with: ser train --preset {preset_path} --fold K ...")
    return 0


def _print_trial(trial) -> None:
    value = "" if trial.value is None else f" value {trial.value:.4f}"
    print(f"trial {trial.number}: {trial.state.name}{value} {json.dumps(trial.params)}")
