"""How a tune run runs its trials: each a ``tune-trial`` flow run, like the folds of a train run;
what a trial run trains (:func:`trial_objective`).

``pool`` (the default, ``SER_FOLD_RUNS``): flow runs of the ``tune-trial`` deployment submitted to
the pool's ``folds`` queue, so a cluster runs them side by side (``SER_FOLD_CONCURRENCY``);
``inline``: subflows of the tune run, one after another. Either way the tune run waits for them and
the study counts what finished (``ser_model.tuning.driver.StudyDriver.run``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from prefect import get_run_logger

from flows.feature_store import local_feature_cache_dir
from flows.fold_runs import fold_job_variables, fold_runs_mode, wait_until_final
from flows.manifest_version import open_manifest_version
from flows.tune_tracking import MlflowStudyTracker
from ser_model.config import SERConfig
from ser_model.tuning.driver import StudyDriver
from ser_model.tuning.objective import TuningObjective
from ser_model.tuning.settings import StudySettings
from ser_model.tuning.space import load_search_space, space_dict
from ser_stack.names import trial_flow_run_name
from ser_stack.settings import StackSettings

TRIAL_DEPLOYMENT = "tune-trial/tune-trial"


def trial_parameters(
    driver: StudyDriver, tracker: MlflowStudyTracker, fingerprint: str, root: str
) -> dict[str, Any]:
    """The ``tune-trial`` parameters of the driver's study: where the study and the manifest are,
    the recipe (base config and space) and the MLflow parent run."""
    settings = driver.settings
    return {
        "corpus": settings.corpus,
        "fingerprint": fingerprint,
        "study_name": settings.name,
        "config": driver.recipe.base.to_dict(),
        "space": space_dict(driver.recipe.space),
        "tune_folds": list(settings.folds),
        "root": root,
        "experiment_id": tracker.experiment_id,
        "parent_run_id": tracker.parent_run_id,
        "heartbeat_grace_s": settings.grace_period_s,
        "seed": settings.seed,
    }


def run_trials(missing: int, parameters: dict[str, Any], trial_flow: Callable[..., int]) -> list[str]:
    """Start ``missing`` trial runs with ``parameters`` (pool or inline; ``trial_flow`` is the
    ``tune-trial`` flow, called directly when inline) and wait; a line for each that did not complete."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    logger, failed = get_run_logger(), []
    if fold_runs_mode() == "inline":
        for _ in range(missing):
            try:
                trial_flow(**parameters)
            except Exception as err:  # noqa: BLE001 - the round goes on; the study counts what finished
                logger.error("trial run failed: %s", err)
                failed.append(f"{type(err).__name__}: {err}")
        return failed
    variables = fold_job_variables(parameters["corpus"], 0)
    variables["name"] = trial_flow_run_name(parameters["corpus"])
    runs = [
        run_deployment(TRIAL_DEPLOYMENT, parameters=parameters, timeout=0, job_variables=variables)
        for _ in range(missing)
    ]
    with get_client(sync_client=True) as api:
        for run in runs:
            final = wait_until_final(api, run.id)
            logger.info("trial run %s %s", final.name, final.state.name)
            if not final.state.is_completed():
                failed.append(f"{final.name}: {final.state.name} {final.state.message or ''}".strip())
    return failed


@contextmanager
def forward_logs(name: str, target: logging.Logger | logging.LoggerAdapter) -> Iterator[None]:
    """Records of logger ``name`` (INFO and up) also go to ``target`` (a trial run's logger) while
    inside: fit's per-epoch lines and "resumed from ..." in the run's log."""

    class Forward(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            target.log(record.levelno, "%s", record.getMessage())

    handler, source = Forward(logging.INFO), logging.getLogger(name)
    previous = source.level
    source.addHandler(handler)
    source.setLevel(min(previous or logging.INFO, logging.INFO))
    try:
        yield
    finally:
        source.removeHandler(handler)
        source.setLevel(previous)


def trial_objective(
    settings: StudySettings,
    stack: StackSettings,
    config: dict[str, Any],
    space: dict[str, Any],
    fingerprint: str,
    root: str,
    tracker: MlflowStudyTracker,
) -> TuningObjective:
    """What one trial run trains: the study's base ``config`` and ``space`` on the manifest
    version ``fingerprint`` (its audio staged locally when ``root`` is s3://), in the trial folders
    ``<state>/tune/<corpus>/<study>/trial-<n>``, with the machine's feature cache; followed by ``tracker``."""
    base = SERConfig.from_dict(config)
    parsed = load_search_space(space, base)
    data = open_manifest_version(settings.corpus, fingerprint, root)
    return TuningObjective(
        base,
        parsed,
        data.manifest,
        data.folds,
        settings.folds,
        data.local_audio_root(stack.state_dir),
        stack.state_dir / "tune" / settings.corpus / settings.name,
        on_trial_start=tracker.trial_started,
        on_epoch=tracker.epoch,
        feature_cache_dir=local_feature_cache_dir(stack),
    )
