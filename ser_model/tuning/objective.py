"""The study's objective: one trial trains the tuning folds and is judged on their validation speakers.

Protocol. A trial trains each of ``tune_folds`` on that fold's training speakers and scores every
epoch on the fold's validation speakers (drawn from its training speakers by the corpus's fold
protocol); its objective is the mean over the folds of the best validation UA (the same rule that
selects a fold's checkpoint). The fold's test speakers are never scored during a study: `fit` runs
with ``score_test=False``. The folds are trained one after another and every epoch is reported to
the pruner at step ``fold_index · 100 + round(100 · epoch / epochs)`` (:func:`pruning_step`) with
the fold's best validation UA so far; the median pruner stops a trial that is below the median of
earlier trials at the same step.
"""

from __future__ import annotations

import logging
import math
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna

from ser_model.config import SERConfig
from ser_model.config_validation import ConfigError
from ser_model.tuning.space import ParamSpec, TuningError, suggest_overrides
from ser_model.tuning.study import original_trial_number, pruning_step

log = logging.getLogger(__package__)  # "ser_model.tuning": one logger for the study's lines


class _PruningCallback:
    """`fit` callback: report the fold's best validation UA so far; raise TrialPruned when the pruner says so."""

    def __init__(
        self,
        trial: optuna.Trial,
        fold: int,
        fold_index: int,
        epochs: int,
        metric: str,
        on_epoch: Callable[..., None] | None,
    ):
        self.trial, self.fold, self.fold_index, self.epochs, self.metric = (
            trial,
            fold,
            fold_index,
            epochs,
            metric,
        )
        self.best = -math.inf
        self.on_epoch = on_epoch

    def on_epoch_end(self, epoch: int, record: dict[str, Any]) -> None:
        if self.on_epoch is not None:
            self.on_epoch(self.trial, self.fold, epoch, record)
        if "valid" not in record:
            return
        self.best = max(self.best, float(record["valid"][self.metric]))
        self.trial.report(self.best, pruning_step(self.fold_index, epoch, self.epochs))
        if self.trial.should_prune():
            raise optuna.TrialPruned(
                f"fold {self.fold} epoch {epoch}: best valid {self.metric} {self.best:.4f} below the median"
            )


class TuningObjective:
    """The study's objective (module docstring): mean best validation UA over ``tune_folds``.

    base: the config every trial starts from (preset + fixed overrides); space: the dimensions;
    out_root: trial folders ``trial-<n>/fold-<k>`` (a retried trial reuses its original's folder,
    so each fold resumes from its last checkpoint). ``on_epoch(trial, fold, epoch, record)``
    and ``on_trial_start(trial, config)`` let a tracker follow the trial (MLflow in flows/tune_tracking.py).
    """

    def __init__(
        self,
        base: SERConfig,
        space: Mapping[str, ParamSpec],
        manifest: Any,
        folds: Any,
        tune_folds: Sequence[int],
        audio_root: str | os.PathLike,
        out_root: str | os.PathLike,
        *,
        on_trial_start: Callable[[optuna.Trial, SERConfig], None] | None = None,
        on_epoch: Callable[[optuna.Trial, int, int, dict[str, Any]], None] | None = None,
        feature_cache_dir: str | os.PathLike | None = None,
    ):
        if len(tune_folds) < 1:
            raise TuningError(
                "tune folds: expected at least one fold (2 or more judge a trial on more speakers)"
            )
        available = sorted(int(k) for k in folds["fold"].unique())
        unknown = sorted(set(tune_folds) - set(available))
        if unknown:
            raise TuningError(f"tune folds {unknown} are not in the fold table; available folds: {available}")
        self.base, self.space = base, dict(space)
        self.manifest, self.folds, self.tune_folds = manifest, folds, [int(k) for k in tune_folds]
        self.audio_root, self.out_root = audio_root, Path(out_root)
        self.on_trial_start, self.on_epoch = on_trial_start, on_epoch
        self.feature_cache_dir = feature_cache_dir
        self.last_trial_number: int | None = None

    def config(self, trial: optuna.Trial) -> SERConfig:
        """The trial's config: the base with the trial's suggestions; an invalid combination prunes the trial."""
        overrides = suggest_overrides(trial, self.space)
        try:
            return self.base.with_overrides(overrides)
        except ConfigError as err:
            trial.set_user_attr("invalid_config", str(err))
            raise optuna.TrialPruned(f"invalid combination: {err}") from err

    def trial_folder(self, trial: optuna.Trial) -> Path:
        return self.out_root / f"trial-{original_trial_number(trial)}"

    def __call__(self, trial: optuna.Trial) -> float:
        from ser_model.launch import fold_folder_name
        from ser_model.train import fit

        self.last_trial_number = trial.number
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())  # which process trains it (to watch it, or to kill it)
        config = self.config(trial)
        folder = self.trial_folder(trial)
        trial.set_user_attr("folder", str(folder))
        if self.on_trial_start is not None:
            self.on_trial_start(trial, config)
        metric = config.train.select_metric
        scores = []
        for index, fold in enumerate(self.tune_folds):
            callback = _PruningCallback(trial, fold, index, config.train.epochs, metric, self.on_epoch)
            result = fit(
                config,
                self.manifest,
                self.folds,
                fold,
                self.audio_root,
                folder / fold_folder_name(fold),
                callbacks=[callback],
                score_test=False,
                feature_cache_dir=self.feature_cache_dir,
            )
            score = float(result.valid[metric])
            scores.append(score)
            trial.set_user_attr(f"valid_{metric}_fold{fold}", score)
            trial.set_user_attr(f"selected_epoch_fold{fold}", result.selected_epoch)
        value = sum(scores) / len(scores)
        log.info(
            "trial %d: mean best valid %s %.4f over folds %s", trial.number, metric, value, self.tune_folds
        )
        return value
