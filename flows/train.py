"""The train flow: cross-validated training of one corpus, each fold its own flow run on the
work pool, tracked in MLflow, then the release model registered as ``ser-<corpus>`` and promoted.

    train (parent)  manifest version → MLflow parent run → one ``train-fold`` run per fold and
                    the release (flows/fold_runs.py) → wait → per-fold and mean scores, summed
                    confusion → register the release model → promote
    train-fold      manifest from S3, audio staged when the root is s3://, feature cache pulled from
                    S3 → torchrun worker (ser_model/launch.py) → cache pushed → MLflow child run

Fold runs wait in the pool's ``folds`` queue, whose concurrency (``SER_FOLD_CONCURRENCY``, default
1) is how many folds train at once (on Kubernetes, each a Job with its GPUs: infra/README.md), or
run inline as subflows with ``SER_FOLD_RUNS=inline`` (no worker needed). A
failed fold is retried alone (infrastructure failures only, never bad data or config); the parent
reads outcomes back from the MLflow child runs, which all workers share. A rerun with the same
inputs resumes the unfinished parent run (train key) and skips folds already logged."""

from __future__ import annotations

import json
import time
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from data_contracts.corpora import check_corpus
from flows import tracking as t
from flows.feature_store import shared_feature_cache
from flows.fold_runs import run_folds, selected_folds
from flows.limits import one_training_per_corpus
from flows.mlflow_ui import run_url
from flows.monitor import watch_before_training
from flows.promote import promote, protocol_name, register_release
from flows.provenance import code_version, package_versions
from flows.pyfunc import log_pyfunc
from flows.report import summary_markdown
from flows.roots import local_audio_root, manifest_root
from flows.storage import MANIFEST_FILES, load_manifest_version, resolve_version
from ser_model.config import SERConfig
from ser_model.launch import (
    BEST_FOLDER,
    CONFIG_FILE,
    RELEASE_FOLD,
    RESULT_FILE,
    FoldJob,
    fold_folder_name,
    retry_unless_refused,
    run_worker,
    write_fold_times,
)
from ser_model.metrics import DEFAULT_UA_MARGIN, headline_scores, selection_rule
from ser_model.presets import DEFAULT_PRESET, experiment_config
from ser_stack.names import (
    BACKBONE_TAG,
    CORPUS_TAG,
    FINGERPRINT_TAG,
    MODEL_URI_TAG,
    PRESET_TAG,
    PROTOCOL_TAG,
    SELECTION_TAG,
    TRAIN_KEY_TAG,
    experiment_name,
)
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


@flow(name="train-fold", flow_run_name="{corpus}-fold{fold}")
def train_fold(
    corpus: str,
    fingerprint: str,
    fold: int,
    config: dict[str, Any],
    root: str,
    experiment_id: str,
    parent_run_id: str,
) -> str:
    """One fold (or the release model, fold -1) of a train run: returns its MLflow child run id."""
    logger = get_run_logger()
    settings = StackSettings.from_env()
    client = MlflowClient(settings.tracking_uri)
    run_id, logged = t.fold_run(client, experiment_id, parent_run_id, fold)
    if logged:
        logger.info("%s already logged in run %s by an earlier attempt", fold_folder_name(fold), run_id)
        return run_id
    cfg = SERConfig.from_dict(config)
    out_dir = settings.state_dir / "runs" / corpus / parent_run_id / fold_folder_name(fold)
    if not (out_dir / RESULT_FILE).exists():
        manifest, fold_table, _ = load_manifest_version(corpus, fingerprint)
        audio_root = local_audio_root(manifest, root, fingerprint, settings.state_dir)
        if audio_root != root:
            logger.info("staged %d files of %s into %s (sha256 verified)", len(manifest), corpus, audio_root)
        (inputs := out_dir.with_name(out_dir.name + "-inputs")).mkdir(parents=True, exist_ok=True)
        cfg.to_json(inputs / CONFIG_FILE)
        manifest.to_parquet(inputs / MANIFEST_FILES["manifest"], index=False)
        fold_table.to_parquet(inputs / MANIFEST_FILES["folds"], index=False)
        with shared_feature_cache(
            cfg, settings, manifest["sha256"]
        ) as feature_cache:  # flows/feature_store.py
            train_worker(
                FoldJob(
                    corpus,
                    fold,
                    inputs / CONFIG_FILE,
                    inputs / MANIFEST_FILES["manifest"],
                    inputs / MANIFEST_FILES["folds"],
                    audio_root,
                    out_dir,
                    cfg.train.epochs,
                    feature_cache,
                )
            )
    else:
        logger.info(
            "%s: %s of an earlier attempt found; not training again", fold_folder_name(fold), RESULT_FILE
        )
    run_id = t.log_fold_run(client, experiment_id, parent_run_id, corpus, fold, out_dir, cfg.labels)
    if fold == RELEASE_FOLD:
        mlflow.set_tracking_uri(settings.tracking_uri)
        with mlflow.start_run(run_id=run_id):
            info = log_pyfunc(out_dir / BEST_FOLDER)
        client.set_tag(run_id, MODEL_URI_TAG, info.model_uri)
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
) -> dict[str, Any]:
    """Train ``corpus`` on a manifest version: folds (default all) and the release model, each a
    ``train-fold`` flow run, then register ``ser-<corpus>`` and promote. ``preset`` names the recipe
    (ser_model/presets.py); ``backbone`` and ``overrides`` (``{"train.epochs": 2}``) go on top;
    ``root`` (a folder or s3://) defaults to the root recorded at ingest. Before any fold, the
    ``monitor`` flow scores the champion on the rows it never trained on (flagged when its UA there
    is more than ``monitor_margin`` below its fold mean); the promotion decision quotes it."""
    logger = get_run_logger()
    check_corpus(corpus)
    settings = StackSettings.from_env()
    fingerprint = resolve_version(corpus, manifest_version)
    manifest, fold_table, report = load_manifest_version(corpus, fingerprint)
    root = manifest_root(corpus, fingerprint, report, root)
    config = experiment_config(corpus, preset, backbone=backbone, overrides=overrides)
    available = sorted(int(k) for k in fold_table["fold"].unique())
    folds = selected_folds(folds, available, f"the {corpus} protocol of manifest {fingerprint}")
    monitor_quote = watch_before_training(corpus, fingerprint, root, monitor_margin) if release else None
    client = MlflowClient(settings.tracking_uri)
    experiment_id = t.get_or_create_experiment(client, experiment_name(corpus))
    tags = {
        CORPUS_TAG: corpus,
        FINGERPRINT_TAG: fingerprint,
        PRESET_TAG: preset,
        BACKBONE_TAG: config.model.backbone,
        TRAIN_KEY_TAG: t.train_key(corpus, fingerprint, config, folds, release, root),
        PROTOCOL_TAG: protocol_name(corpus, len(available), folds),
        SELECTION_TAG: selection_rule(config.train.select_metric),
        **code_version(REPO_ROOT),
        **package_versions(),
    }
    params = {
        **t.flatten_params(config.to_dict()),
        "data.fingerprint": fingerprint,
        "data.utterances": str(len(manifest)),
        "folds": json.dumps(folds),
        "release": str(release),
    }
    parent_id, resumed = t.start_parent_run(client, experiment_id, tags, params)
    logger.info(
        "%s MLflow parent run %s: %s",
        "resuming" if resumed else "started",
        parent_id,
        run_url(settings.tracking_uri, experiment_id, parent_id),
    )
    try:
        fold_params = {
            "corpus": corpus,
            "fingerprint": fingerprint,
            "config": config.to_dict(),
            "root": root,
            "experiment_id": experiment_id,
            "parent_run_id": parent_id,
        }
        finished = run_folds(client, folds + ([RELEASE_FOLD] if release else []), fold_params, train_fold)
        outcomes = [o for o in finished if o["fold"] != RELEASE_FOLD]
        summary = t.log_parent_summary(client, parent_id, corpus, outcomes, config.labels)
        version = decision = None
        if release:
            released = next(o for o in finished if o["fold"] == RELEASE_FOLD)
            ua_by_fold = {o["fold"]: headline_scores(o["result"])["UA"] for o in outcomes}
            version, new = register_release(
                client, parent_id, released["model_uri"], ua_by_fold, fold_table, summary, config.labels
            )
            logger.info(
                "release model %s ser-%s version %s",
                "registered as" if new else "already registered by an earlier attempt as",
                corpus,
                version,
            )
            decision = promote(corpus, version, margin=promote_margin, monitor_quote=monitor_quote)
        markdown = summary_markdown(
            corpus, fingerprint, outcomes, summary, version, decision, tags[SELECTION_TAG]
        )
        create_markdown_artifact(markdown, key=f"train-{corpus}", description=f"cross-validation of {corpus}")
        client.set_terminated(parent_id, "FINISHED")
    except BaseException:
        try:
            client.set_terminated(parent_id, "FAILED")
        except Exception as err:  # the tracking server may be the reason we failed
            logger.warning("could not mark MLflow run %s FAILED: %s", parent_id, err)
        raise
    return {
        "parent_run_id": parent_id,
        "fingerprint": fingerprint,
        "summary": summary,
        "version": version,
        "promotion": decision,
    }
