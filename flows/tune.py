"""The tune flow: an Optuna study of one corpus (``ser_model.tuning.driver.StudyDriver``) in the
stack's storage (``SER_TUNE_STORAGE``, default ``<state>/optuna.db``), tracked in MLflow (a parent run
and a child run per trial: flows/tune_tracking.py), each trial a ``tune-trial`` flow run
(flows/trial_runs.py: on the pool's ``folds`` queue, or inline); the best trial becomes a preset file
under ``<state>/presets/`` and an artifact of the parent run. The study, not the flow, holds the
progress: running the same tune again (same corpus, manifest and study name) runs only the trials
still missing, and the trial of a killed run is retried with its parameters once its heartbeat is
``heartbeat_grace_s`` old, resuming each fold from its last checkpoint.
"""

from __future__ import annotations

import json
from typing import Any

from mlflow.tracking import MlflowClient
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from data_contracts.datasets import resolve_dataset
from flows.manifest_version import open_manifest_version
from flows.mlflow_ui import run_url
from flows.trial_runs import forward_logs, run_trials, trial_objective, trial_parameters
from flows.tune_tracking import MlflowStudyTracker, study_markdown
from ser_model.tuning.driver import StudyDriver, open_settings_study, run_trial, study_summary
from ser_model.tuning.settings import StudySettings
from ser_stack import names as n
from ser_stack.settings import StackSettings


@flow(name="tune-trial", flow_run_name="{corpus}-{study_name}")
def tune_trial(
    corpus: str,
    fingerprint: str,
    study_name: str,
    config: dict[str, Any],
    space: dict[str, Any],
    tune_folds: list[int],
    root: str,
    experiment_id: str,
    parent_run_id: str,
    heartbeat_grace_s: float = StudySettings.grace_period_s,
    seed: int = StudySettings.seed,
) -> int:
    """One trial of a study (or the retry of a killed one): returns its trial number."""
    logger, stack = get_run_logger(), StackSettings.from_env()
    settings = StudySettings(
        corpus,
        stack.tune_storage,
        name=study_name,
        folds=tune_folds,
        grace_period_s=heartbeat_grace_s,
        seed=seed,
    )
    tracker = MlflowStudyTracker(
        MlflowClient(stack.tracking_uri), experiment_id, parent_run_id, stack.tracking_uri
    )
    objective = trial_objective(settings, stack, config, space, fingerprint, root, tracker)
    with forward_logs("ser_model", logger):  # fit's per-epoch lines and "resumed from ..." in the run's log
        trial = run_trial(open_settings_study(settings), objective, tracker)
    params = json.dumps(trial.params)
    logger.info("trial %d: %s value %s params %s", trial.number, trial.state.name, trial.value, params)
    return trial.number


@flow(name="tune")
def tune(
    corpus: str,
    manifest_version: str = "latest",
    preset: str = StudySettings.preset,
    space: str | dict[str, Any] | None = None,
    trials: int = StudySettings.trials,
    epochs: int | None = None,
    folds: list[int] | None = None,
    overrides: dict[str, Any] | None = None,
    study: str | None = None,
    root: str | None = None,
    seed: int = StudySettings.seed,
    heartbeat_grace_s: float = StudySettings.grace_period_s,
) -> dict[str, Any]:
    """Tune ``corpus``: ``trials`` finished trials of a study (name default ``ser-<corpus>-tune``)
    over ``space`` (a shipped space's name, a JSON object, or None for the preset's), each trial
    training ``folds`` (default 0, 1) for ``epochs`` (default the preset's) and judged on their
    validation speakers. Writes the best trial as a preset file; returns its path and the summary."""
    logger = get_run_logger()
    resolve_dataset(corpus)
    if trials < 1:
        raise ValueError(f"trials={trials}: expected at least 1")
    stack = StackSettings.from_env()
    data = open_manifest_version(corpus, manifest_version, root)
    driver = StudyDriver(
        StudySettings(
            corpus=corpus,
            storage=stack.tune_storage,
            name=study or "",
            preset=preset,
            space=space,
            epochs=epochs,
            overrides=overrides or {},
            trials=trials,
            folds=folds or StudySettings.folds,
            grace_period_s=heartbeat_grace_s,
            seed=seed,
        )
    )
    settings, client = driver.settings, MlflowClient(stack.tracking_uri)
    driver.tracker = tracker = MlflowStudyTracker.start(
        client, driver, root=data.root, fingerprint=data.fingerprint, tracking_uri=stack.tracking_uri
    )
    url = run_url(stack.tracking_uri, tracker.experiment_id, tracker.parent_run_id)
    logger.info(
        "study %s in %s; MLflow tune run %s: %s", settings.name, settings.storage, tracker.parent_run_id, url
    )
    parameters = trial_parameters(driver, tracker, data.fingerprint, data.root)
    driver.run(
        lambda missing: run_trials(missing, parameters, tune_trial), trials_elsewhere=True, logger=logger
    )
    preset_path = driver.write_best_preset(driver.best_preset_file(stack.state_dir / "presets"))
    summary = study_summary(driver.study)
    create_markdown_artifact(
        study_markdown(corpus, summary, preset_path),
        key=n.job_name(n.TUNE, corpus),
        description=f"tuning study of {corpus}",
    )
    logger.info(
        "best trial %s: mean valid UA %.4f; preset file %s",
        summary.get("best_trial"),
        summary.get("best_value", float("nan")),
        preset_path,
    )
    return {
        "study": settings.name,
        "parent_run_id": tracker.parent_run_id,
        "preset_file": str(preset_path),
        "summary": summary,
    }
