"""The train flow: cross-validated training of one corpus, each fold its own flow run, tracked in
MLflow, then the release model registered as ``ser-<corpus>`` and promoted.

    train       manifest version (flows/manifest_version.py) → monitor → MLflow parent run
                (flows/training_runs.py) → a ``train-fold`` run per fold (flows/fold_runs.py:
                on the pool's ``folds`` queue, or inline), then the release's with the folds'
                results (its temperature) → fold summary → the release registered and promoted
                (flows/release.py)
    train-fold  the manifest version opened again from its parameters, its audio local, the
                feature cache pulled (flows/feature_store.py) → torchrun worker
                (ser_model/launch.py) → cache pushed → MLflow child run

A failed fold is retried alone (infrastructure failures only, never bad data or config). A rerun
with the same inputs resumes the unfinished parent run (train key) and skips folds already logged."""

from __future__ import annotations

import json
import time
from typing import Any

from mlflow.tracking import MlflowClient
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run as current_flow_run

from flows import training_runs as runs
from flows.fold_runs import prepared_fold, run_folds, selected_folds
from flows.limits import one_training_per_corpus
from flows.manifest_version import open_manifest_version
from flows.monitor import watch_before_training
from flows.release import log_release_model, register_and_promote
from flows.report import summary_markdown
from flows.warm_start import pinned_init
from ser_model.config import SERConfig
from ser_model.launch import (
    FOLD_RESULTS_FILE,
    RELEASE_FOLD,
    RESULT_FILE,
    FoldJob,
    fold_folder_name,
    retry_unless_refused,
    run_worker,
    write_fold_times,
)
from ser_model.metrics import DEFAULT_UA_MARGIN, selection_rule
from ser_model.presets import DEFAULT_PRESET, experiment_config
from ser_stack.files import write_atomically
from ser_stack.names import TRAIN, job_name
from ser_stack.settings import REPO_ROOT, StackSettings


@task(
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=[10, 60],
    retry_condition_fn=retry_unless_refused,
    task_run_name="{job.corpus}-{job.name}",
)
def train_worker(job: FoldJob) -> None:
    """Run the fold's worker under torchrun, its output in this task's log (resumes after a retry)."""
    logger = get_run_logger()
    started_ms = int(time.time() * 1000)
    run_worker(job, emit=lambda line: logger.info("[%s] %s", job.name, line), cwd=REPO_ROOT)
    write_fold_times(job.out_dir, started_ms, int(time.time() * 1000))


def fold_flow_run_name() -> str:
    """The name of a train-fold flow run in Prefect's UI and logs: ``ravdess-fold0``, or
    ``ravdess-release`` for the release model (the template's ``{corpus}-fold{fold}`` named it
    ``ravdess-fold-1``, which read like fold 1)."""
    parameters = current_flow_run.parameters
    corpus, fold = parameters["corpus"], parameters["fold"]
    return f"{corpus}-release" if fold == RELEASE_FOLD else f"{corpus}-fold{fold}"


@flow(name="train-fold", flow_run_name=fold_flow_run_name)
def train_fold(
    corpus: str,
    fingerprint: str,
    fold: int,
    config: dict[str, Any],
    root: str,
    experiment_id: str,
    parent_run_id: str,
    init: str | None = None,
    fold_results: dict[str, Any] | None = None,
) -> str:
    """One fold (or the release model, fold -1) of a train run, perhaps on another machine: the
    manifest version is opened again from its parameters; ``init`` (pinned by the train run) is
    fetched here; the release gets its folds' result.json as ``fold_results`` ({"<k>": …}), written
    into its folder for its temperature and model card. Returns the fold's MLflow child run id."""
    logger = get_run_logger()
    settings = StackSettings.from_env()
    client = MlflowClient(settings.tracking_uri)
    run_id, logged = runs.fold_run(client, experiment_id, parent_run_id, fold)
    if logged:
        logger.info("%s already logged in run %s by an earlier attempt", fold_folder_name(fold), run_id)
        return run_id
    cfg = SERConfig.from_dict(config)
    out_dir = settings.state_dir / "runs" / corpus / parent_run_id / fold_folder_name(fold)
    if (out_dir / RESULT_FILE).exists():
        logger.info("%s: %s of an earlier attempt found; not training again", out_dir.name, RESULT_FILE)
    else:
        if fold_results:  # the release's folds, wherever they ran (ser_model.calibration.fold_results_beside)
            out_dir.mkdir(parents=True, exist_ok=True)
            write_atomically(out_dir / FOLD_RESULTS_FILE, json.dumps(fold_results))
        with prepared_fold(
            open_manifest_version(corpus, fingerprint, root), fold, cfg, out_dir, settings, init
        ) as job:
            train_worker(job)
    run_id = runs.log_fold_run(client, experiment_id, parent_run_id, corpus, fold, out_dir, cfg.labels)
    if fold == RELEASE_FOLD:
        log_release_model(client, run_id, out_dir)
    return run_id


@flow(name="train")
@one_training_per_corpus
def train(
    corpus: str,
    manifest_version: str = "latest",
    preset: str = DEFAULT_PRESET,
    backbone: str | None = None,
    overrides: dict[str, Any] | None = None,
    folds: list[int] | None = None,
    release: bool = True,
    root: str | None = None,
    promote_margin: float = 0.0,
    monitor_margin: float = DEFAULT_UA_MARGIN,
    init: str | None = None,
) -> dict[str, Any]:
    """Train ``corpus`` on a manifest version: folds (default all), then the release model with
    their results (its temperature is their median), each a ``train-fold`` flow run, then register
    ``ser-<corpus>`` and promote. ``preset`` names the recipe
    (ser_model/presets.py); ``backbone`` and ``overrides`` (``{"train.epochs": 2}``) go on top;
    ``root`` (a folder or s3://) defaults to the root recorded at ingest. Before any fold, the
    ``monitor`` flow scores the champion on the rows it never trained on (flagged when its UA there
    is more than ``monitor_margin`` below its fold mean); the promotion decision quotes it.
    ``init`` (``models:/ser-ravdess@champion`` or a model folder) starts every fold from that model's
    weights (ser_model/warm_start.py), its alias pinned to a version once (flows/warm_start.py)."""
    logger = get_run_logger()
    data = open_manifest_version(corpus, manifest_version, root)
    config = experiment_config(corpus, preset, backbone=backbone, overrides=overrides)
    folds = selected_folds(folds, data.fold_numbers, data.protocol)
    client = MlflowClient(StackSettings.from_env().tracking_uri)
    init = pinned_init(client, init)
    monitor_quote = watch_before_training(data, monitor_margin) if release else None
    parent = runs.start_parent_run(client, data, preset, config, folds, release, init)
    logger.info(
        "%s MLflow parent run %s: %s", "resuming" if parent.resumed else "started", parent.run_id, parent.url
    )
    version = decision = None
    with runs.parent_run_ends(client, parent.run_id, logger):
        fold_parameters = {
            **data.parameters(),
            "config": config.to_dict(),
            **parent.parameters(),
            "init": init,
        }
        # the release after its folds: it takes its temperature from theirs, wherever they ran
        outcomes = run_folds(client, folds, fold_parameters, train_fold)
        handed = {str(o["fold"]): o["result"] for o in outcomes}
        finished = outcomes + (
            run_folds(client, [RELEASE_FOLD], {**fold_parameters, "fold_results": handed}, train_fold)
            if release
            else []
        )
        summary = runs.log_parent_summary(client, parent.run_id, corpus, outcomes, config.labels)
        if release:
            version, decision = register_and_promote(
                client,
                parent.run_id,
                finished,
                data,
                summary,
                config,
                promote_margin,
                monitor_quote,
                recipe={"preset": preset, "overrides": overrides or {}},
            )
        rule = selection_rule(config.train.select_metric)
        markdown = summary_markdown(data, outcomes, summary, version, decision, rule)
        create_markdown_artifact(
            markdown, key=job_name(TRAIN, corpus), description=f"cross-validation of {corpus}"
        )
    return {
        "parent_run_id": parent.run_id,
        "fingerprint": data.fingerprint,
        "summary": summary,
        "version": version,
        "promotion": decision,
    }
