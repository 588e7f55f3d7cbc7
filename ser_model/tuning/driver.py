"""The study driver: one study from its settings to the preset file of its best trial, wherever
its trials run.

    driver = StudyDriver(settings)      # the recipe; the study opened (created when new); the base recipe queued
    driver.tracker = tracker            # optional: follows the study (MLflow: flows/tune_tracking.py)
    driver.run(driver.trials_here(objective, report))               # ser tune: each trial in this process
    driver.run(start_trial_runs, trials_elsewhere=True, logger=log) # the tune flow: trials as flow runs
    driver.write_best_preset(driver.best_preset_file(folder))

The study, not the process, holds the progress: the driver runs rounds of trials until
``settings.trials`` have finished (complete or pruned; a failed or killed one does not count), so
running it again on the same storage resumes the study. ``ser tune`` runs one trial a round in its
own process, where Optuna fails a stale trial and queues its retry before each trial. The tune flow
runs a round's missing trials elsewhere, each a flow run that opens the study and calls
:func:`run_trial`; before each round the driver waits until the trials of killed runs have been
silent for the grace period, marks them failed and queues their retries, which that round's runs
take first. Either way a retry trains in its original trial's folder and resumes its checkpoints.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import optuna

from ser_model.config import SERConfig
from ser_model.presets import (
    PRESET_FILE_FORMAT,
    PRESET_FILE_VERSION,
    experiment_config,
    split_preset,
    write_preset_file,
)
from ser_model.tuning.objective import TuningObjective
from ser_model.tuning.settings import StudySettings
from ser_model.tuning.space import ParamSpec, TuningError, decode_choice, encode_choice, load_search_space
from ser_model.tuning.study import fail_stale_trials, open_study, retried_from, worker_seed

log = logging.getLogger(__package__)  # "ser_model.tuning": one logger for the study's lines

DONE_STATES = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
"""Trials that count towards a study's number of trials (a failed or killed one does not)."""
OBJECTIVE = "mean best validation UA over the tuning folds (test speakers never scored)"
"""What a trial's value is, in the preset file and the tracker's records."""

TrialRunner = Callable[[int], Sequence[str]]
"""``(trials missing) -> a line per trial run that failed``: runs up to that many trials of the
study and returns once they have ended."""


class StudyTracker(Protocol):
    """What follows a study (flows/tune_tracking.py logs it to MLflow: a parent run, a child run per trial)."""

    def trial_started(self, trial: optuna.Trial, config: SERConfig) -> None: ...

    def epoch(self, trial: optuna.Trial, fold: int, epoch: int, record: Mapping[str, Any]) -> None: ...

    def trial_finished(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None: ...

    def close_failed(self, study: optuna.Study) -> None: ...

    def finish(self, study: optuna.Study, preset_path: Path | None) -> Any: ...


@dataclass(frozen=True)
class StudyRecipe:
    """What every trial starts from: ``base`` (the preset with the study's fixed settings) and the
    search ``space``; and what the best trial's preset file records besides its tuned values: the
    preset it ``extends`` and the ``fixed`` settings (a preset file's own, then the study's)."""

    base: SERConfig
    space: dict[str, ParamSpec]
    extends: str
    fixed: dict[str, Any]


def study_recipe(settings: StudySettings) -> StudyRecipe:
    """The recipe of ``settings``: its preset and fixed settings, and its space (the preset's when None)."""
    fixed = settings.fixed_settings()
    base = experiment_config(settings.corpus, settings.preset, overrides=fixed)
    extends, own = split_preset(settings.preset)
    return StudyRecipe(base, load_search_space(settings.space or extends, base), extends, {**own, **fixed})


def open_settings_study(settings: StudySettings) -> optuna.Study:
    """The study of ``settings`` (created when new), sampling with this process's seed."""
    return open_study(
        settings.name,
        settings.storage,
        seed=worker_seed(settings.seed),
        grace_period_s=settings.grace_period_s,
    )


def run_trial(
    study: optuna.Study, objective: TuningObjective, tracker: StudyTracker | None = None
) -> optuna.trial.FrozenTrial:
    """One trial of ``study`` in this process (the retry of a killed trial first, when one is queued); the trial."""
    study.optimize(objective, n_trials=1, callbacks=[tracker.trial_finished] if tracker else [])
    return study.trials[objective.last_trial_number]


class StudyDriver:
    """One study of ``settings`` (module docstring). ``tracker``, when set, follows every trial
    this process runs, closes the records of killed trials and records the end of the study."""

    def __init__(self, settings: StudySettings):
        self.settings = settings
        self.recipe = study_recipe(settings)
        self.study = open_settings_study(settings)
        enqueue_base(self.study, self.recipe.space, self.recipe.base)
        self.tracker: StudyTracker | None = None

    def finished(self) -> int:
        """How many trials count towards the budget (:data:`DONE_STATES`)."""
        return sum(t.state in DONE_STATES for t in self.study.trials)

    def objective(
        self,
        manifest: Any,
        folds: Any,
        audio_root: str | os.PathLike,
        out_root: str | os.PathLike,
        feature_cache_dir: str | os.PathLike | None = None,
    ) -> TuningObjective:
        """The objective of this study's trials on ``manifest`` / ``folds``, followed by the tracker."""
        tracker = self.tracker
        return TuningObjective(
            self.recipe.base,
            self.recipe.space,
            manifest,
            folds,
            self.settings.folds,
            audio_root,
            out_root,
            on_trial_start=tracker.trial_started if tracker else None,
            on_epoch=tracker.epoch if tracker else None,
            feature_cache_dir=feature_cache_dir,
        )

    def trials_here(
        self, objective: TuningObjective, report: Callable[[optuna.trial.FrozenTrial], None]
    ) -> TrialRunner:
        """Rounds of one trial each, run in this process; ``report`` gets each trial once it ended."""

        def one_trial(missing: int) -> list[str]:
            report(run_trial(self.study, objective, self.tracker))
            return []

        return one_trial

    def run(
        self,
        run_trials: TrialRunner,
        *,
        trials_elsewhere: bool = False,
        logger: logging.Logger | logging.LoggerAdapter = log,
    ) -> None:
        """Rounds of ``run_trials`` until the budget has finished. With ``trials_elsewhere`` (each
        trial a process of its own), the trials of killed runs are retried first; a round in which
        no trial finished and a run failed raises RuntimeError naming the failures."""
        budget = self.settings.trials
        while (before := self.finished()) < budget:
            if trials_elsewhere:
                self.retry_stale_trials(logger)
            missing = budget - self.finished()
            if trials_elsewhere:
                logger.info(
                    "study %s: %d of %d trials done; starting %d trial run(s)",
                    self.settings.name,
                    before,
                    budget,
                    missing,
                )
            failures = run_trials(missing)
            if self.finished() == before and failures:
                raise RuntimeError(
                    f"no trial of study {self.settings.name} finished in this round: {'; '.join(failures)}"
                )

    def retry_stale_trials(self, logger: logging.Logger | logging.LoggerAdapter = log) -> None:
        """Trials still marked running between rounds belong to killed runs: once their heartbeat
        is older than the grace period, mark them failed and queue their retries (and close their
        tracked records)."""
        stale = [t.number for t in self.study.trials if t.state == optuna.trial.TrialState.RUNNING]
        if not stale:
            return
        grace = self.settings.grace_period_s
        logger.info("trial(s) %s still marked running; retrying them once silent for %.0f s", stale, grace)
        time.sleep(grace + 1)
        fail_stale_trials(self.study)
        if self.tracker is not None:
            self.tracker.close_failed(self.study)

    def best_preset_file(self, folder: str | os.PathLike) -> Path:
        """Where in ``folder`` the best trial's preset file goes: ``<study>-best.json``."""
        return Path(folder) / f"{self.settings.name}-best.json"

    def write_best_preset(self, path: str | os.PathLike) -> Path:
        """Write the best trial as a preset file (:func:`best_preset`) and end the tracked study; its path."""
        preset = best_preset(self.study, self.recipe.extends, self.recipe.fixed, corpus=self.settings.corpus)
        written = write_preset_file(path, preset)
        if self.tracker is not None:
            self.tracker.finish(self.study, written)
        return written


def config_value(config: SERConfig, key: str) -> Any:
    """The value of override key ``key`` ("train.lr") in ``config``."""
    value = config.value(key)
    return list(value) if isinstance(value, tuple) else value


def enqueue_base(
    study: optuna.Study, space: Mapping[str, ParamSpec], base: SERConfig
) -> dict[str, Any] | None:
    """Queue the base recipe's own values as the study's first trial (when the study is empty and
    every value lies inside the space), so the best trial is never one the hand-set recipe beats
    on the same objective. Returns the queued parameters, or None."""
    if study.trials:
        return None
    params: dict[str, Any] = {}
    for key, p in space.items():  # the dimensions the base's own values make active, in order
        if p.active(params):
            params[key] = config_value(base, key)
    for key, value in params.items():
        p = space[key]
        inside = (
            value in p.choices
            if p.type == "categorical"
            else isinstance(value, (int, float)) and p.low <= value <= p.high
        )
        if not inside:
            log.info(
                "base value %s=%r lies outside the space; the study starts from the sampler alone", key, value
            )
            return None
    study.enqueue_trial(
        {
            key: encode_choice(value) if space[key].type == "categorical" else value
            for key, value in params.items()
        },
        user_attrs={"enqueued": "base recipe"},
    )
    return params


def best_preset(
    study: optuna.Study,
    base_preset: str,
    base_overrides: Mapping[str, Any] | None = None,
    *,
    corpus: str | None = None,
) -> dict[str, Any]:
    """The preset file's content for the study's best trial: the base preset it extends, the fixed
    overrides, the tuned values, and where they came from (study, trial, value, folds)."""
    finished = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not finished:
        raise TuningError(f"study {study.study_name}: no finished trial yet, so no best preset to write")
    best = study.best_trial
    return {
        "format": PRESET_FILE_FORMAT,
        "version": PRESET_FILE_VERSION,
        "extends": base_preset,
        "settings": {**dict(base_overrides or {}), **{k: decode_choice(v) for k, v in best.params.items()}},
        "source": {
            "study": study.study_name,
            "trial": best.number,
            "objective": OBJECTIVE,
            "value": best.value,
            "corpus": corpus,
            "complete_trials": len(finished),
            "pruned_trials": sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials),
            "tuned_keys": sorted(best.params),
        },
    }


def study_summary(study: optuna.Study) -> dict[str, Any]:
    """Counts by state, the best trial's value and parameters, and each trial's state and value."""
    states: dict[str, int] = {}
    for t in study.trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    summary: dict[str, Any] = {"study": study.study_name, "trials": len(study.trials), "states": states}
    if complete:
        summary.update(
            best_value=study.best_value, best_trial=study.best_trial.number, best_params=study.best_params
        )
    summary["per_trial"] = [
        {
            "number": t.number,
            "state": t.state.name,
            "value": t.value,
            "params": t.params,
            "last_step": t.last_step,
            "retried_from": retried_from(t),
        }
        for t in study.trials
    ]
    return summary
