"""The lifecycle of a training's MLflow runs: the experiment, the parent run found again by its
train key, one child run per fold logged from its fold folder, the parent's fold summary.

Everything here talks to MLflow through an explicit ``MlflowClient`` and explicit run ids
(no fluent active-run state), so Prefect tasks running in threads cannot mix runs up.

Outages: the worker writes its epoch metrics to ``metrics.jsonl`` on local disk while it
trains, and the flow forwards them to MLflow only after the fold ends. That file is the
buffer: an MLflow outage during training loses nothing. Each request rides out a short outage
by MLflow's own HTTP retries (``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` and ``_BACKOFF_FACTOR``, set for
the stack's processes in infra/stack.py); a longer one fails the task, and Prefect's task
retries or a rerun resume where it stopped.

Nothing here reads the environment, so no credential can reach params, tags or artifacts.
Figures are built in flows/figures.py, fold statistics in ser_model/metrics.py.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from flows.figures import confusion_figure, training_curves_figure
from flows.mlflow_ui import EXPERIMENT_TAGS
from ser_model.config import SERConfig
from ser_model.launch import METRICS_FILE, RESULT_FILE, fold_folder_name, fold_times, read_result
from ser_model.metrics import (
    fold_metric_name,
    fold_summary,
    headline_scores,
    metric_leaves,
    summed_confusion,
)
from ser_stack.names import CORPUS_TAG, FOLD_TAG, LOGGED_TAG, MODEL_URI_TAG, TRAIN_KEY_TAG

log = logging.getLogger(__name__)

MLFLOW_PARAM_VALUE_LIMIT = 6000
"""MLflow 3 rejects param values longer than this."""

BATCH_LIMIT = 1000
"""MLflow's log_batch accepts at most 1000 metrics per call."""

PARENT_RUN_ID_TAG = "mlflow.parentRunId"
"""MLflow's own tag that nests a child run under its parent in the UI."""
UNFINISHED = ("RUNNING", "SCHEDULED", "FAILED", "KILLED")
"""Statuses of a parent run that a rerun with the same inputs resumes."""
CONFUSION_PNG, CURVES_PNG = "figures/confusion.png", "figures/training_curves.png"


def flatten_params(nested: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Flatten a nested config dict into MLflow params: ``{"train": {"lr": 1e-4}}`` →
    ``{"train.lr": "0.0001"}``.

    Lists and tuples become their JSON text (``labels`` → ``["neutral", ...]``); values longer
    than MLflow's limit are cut with a trailing ``…`` rather than rejected.
    """
    flat: dict[str, str] = {}
    for key, value in nested.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, name))
            continue
        text = json.dumps(list(value)) if isinstance(value, (list, tuple)) else str(value)
        if len(text) > MLFLOW_PARAM_VALUE_LIMIT:
            text = text[: MLFLOW_PARAM_VALUE_LIMIT - 1] + "…"
        flat[name] = text
    return flat


def read_metrics_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read the worker's ``metrics.jsonl``: one JSON object per epoch, in order.

    A last line cut short by a killed worker is skipped with a warning (the epoch it
    described is re-run on resume); any other malformed line is an error naming the line.
    """
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            if number == len(lines):
                log.warning("%s:%d: skipping a truncated last line (%s)", path, number, err)
                continue
            raise ValueError(
                f"{path}:{number}: not a JSON object ({err}); expected one JSON object per epoch"
            ) from err
    return records


def epoch_metrics(records: Iterable[Mapping[str, Any]], timestamp_ms: int | None = None) -> list[Metric]:
    """MLflow metrics from epoch records: every finite numeric leaf except ``epoch`` itself,
    nested keys joined by ``.`` (``{"train": {"loss": 1.2}}`` → ``train.loss``), step = epoch.
    """
    stamp = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
    metrics = []
    for index, record in enumerate(records):
        step = int(record.get("epoch", index))
        metrics.extend(
            Metric(key=name, value=value, timestamp=stamp, step=step)
            for name, value in metric_leaves(record)
            if name != "epoch"
        )
    return metrics


def log_batch(
    client: MlflowClient,
    run_id: str,
    metrics: Iterable[Metric] = (),
    params: Mapping[str, str] | None = None,
    tags: Mapping[str, str] | None = None,
) -> None:
    """Send metrics, params and tags to a run in chunks MLflow accepts."""
    metrics = list(metrics)
    param_list = [Param(k, v) for k, v in (params or {}).items()]
    tag_list = [RunTag(k, str(v)) for k, v in (tags or {}).items()]
    for start in range(0, len(param_list), 100):
        client.log_batch(run_id, params=param_list[start : start + 100])
    for start in range(0, len(tag_list), 100):
        client.log_batch(run_id, tags=tag_list[start : start + 100])
    for start in range(0, len(metrics), BATCH_LIMIT):
        client.log_batch(run_id, metrics=metrics[start : start + BATCH_LIMIT])


def get_or_create_experiment(client: MlflowClient, name: str) -> str:
    """Id of the experiment ``name``, created if missing (safe when two flows race), with
    EXPERIMENT_TAGS set, so the MLflow UI shows it as a training experiment with its scores."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name, tags=EXPERIMENT_TAGS)
        except MlflowException:
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    for key, value in EXPERIMENT_TAGS.items():
        if experiment.tags.get(key) != value:
            client.set_experiment_tag(experiment.experiment_id, key, value)
    return experiment.experiment_id


def find_run(
    client: MlflowClient, experiment_id: str, tags: Mapping[str, str], statuses: tuple[str, ...] | None = None
) -> str | None:
    """Id of the newest run in the experiment carrying all ``tags`` (optionally only runs in
    ``statuses``), or None."""
    conditions = [f"tags.`{key}` = '{value}'" for key, value in tags.items()]
    runs = client.search_runs(
        [experiment_id],
        filter_string=" and ".join(conditions),
        order_by=["attributes.start_time DESC"],
        max_results=50,
    )
    for run in runs:
        if statuses is None or run.info.status in statuses:
            return run.info.run_id
    return None


def train_key(
    corpus: str, fingerprint: str, config: SERConfig, folds: list[int], release: bool, audio_root: str
) -> str:
    """sha256 naming a training job by its inputs: the same inputs find the same parent run."""
    inputs = dict(corpus=corpus, fingerprint=fingerprint, config=config.to_dict(), folds=folds)
    payload = json.dumps({**inputs, "release": release, "root": audio_root}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def start_parent_run(
    client: MlflowClient, experiment_id: str, tags: dict[str, str], params: dict[str, str]
) -> tuple[str, bool]:
    """(run id, resumed): the unfinished parent run with the same train key, or a new one with tags and params."""
    parent_id = find_run(client, experiment_id, {TRAIN_KEY_TAG: tags[TRAIN_KEY_TAG]}, statuses=UNFINISHED)
    if parent_id is not None:
        client.update_run(parent_id, status="RUNNING")
        return parent_id, True
    parent_id = client.create_run(experiment_id, tags=tags, run_name=f"train-{tags[CORPUS_TAG]}").info.run_id
    log_batch(client, parent_id, params=params)
    return parent_id, False


def fold_run(client: MlflowClient, experiment_id: str, parent_id: str, fold: int) -> tuple[str | None, bool]:
    """(child run id or None, whether it is completely logged) of ``fold`` under the parent run."""
    run_id = find_run(client, experiment_id, {PARENT_RUN_ID_TAG: parent_id, FOLD_TAG: str(fold)})
    if run_id is None:
        return None, False
    return run_id, client.get_run(run_id).data.tags.get(LOGGED_TAG) == "true"


def log_fold_run(
    client: MlflowClient,
    experiment_id: str,
    parent_id: str,
    corpus: str,
    fold: int,
    out_dir: Path,
    labels: tuple[str, ...],
) -> str:
    """Child run of one fold from its fold folder (ser_model/launch.py), created once and reused
    by a retry: epoch metrics, selected-epoch valid/test metrics, result.json, metrics.jsonl,
    confusion and curve figures; its start and end are the training's when recorded."""
    name = fold_folder_name(fold)
    tags = {PARENT_RUN_ID_TAG: parent_id, FOLD_TAG: str(fold)}
    start_ms, end_ms = fold_times(out_dir)
    run_id, logged = fold_run(client, experiment_id, parent_id, fold)
    if logged:
        return run_id
    if run_id is None:
        run_id = client.create_run(
            experiment_id,
            start_time=start_ms,
            tags={**tags, CORPUS_TAG: corpus},
            run_name=name,
        ).info.run_id
    result = read_result(out_dir)
    records = read_metrics_jsonl(out_dir / METRICS_FILE) if (out_dir / METRICS_FILE).exists() else []
    # the selected epoch's scores at its step, not at step 0: MLflow's log_model (the release's
    # pyfunc, flows/train.py) re-logs each metric at its own step, 0, tagged with the model's id
    # (log_model_metrics_for_step in mlflow/models/model.py), and as the metrics table's key leaves
    # that id out, PostgreSQL refuses each as a duplicate, an ERROR line in its log; epochs start at 1
    step = int(result.get("selected_epoch") or 0)
    summary = []
    for split, prefix in (("valid", "selected.valid"), ("test", "test")):
        if result.get(split):
            summary += [
                Metric(f"{prefix}.{m}", v, 0, step) for m, v in headline_scores(result, split).items()
            ]
    params = {"fold": str(fold), "selected_epoch": str(result.get("selected_epoch"))}
    # one timestamp that a retry repeats exactly, so MLflow keeps each epoch's metrics once
    stamp = end_ms or int((out_dir / RESULT_FILE).stat().st_mtime * 1000)
    log_batch(client, run_id, metrics=epoch_metrics(records, stamp) + summary, params=params)
    for file in (RESULT_FILE, METRICS_FILE):
        if (out_dir / file).exists():
            client.log_artifact(run_id, str(out_dir / file))
    split = "test" if result.get("test", {}).get("confusion") else "valid"
    if result.get(split, {}).get("confusion"):
        title = f"{corpus} {name} ({split} speakers)"
        client.log_figure(run_id, confusion_figure(result[split]["confusion"], labels, title), CONFUSION_PNG)
    curves = training_curves_figure({fold: records}, f"{corpus} {name}")
    client.log_figure(run_id, curves, CURVES_PNG)
    client.set_tag(run_id, LOGGED_TAG, "true")
    client.set_terminated(run_id, "FINISHED", end_time=end_ms)
    return run_id


def fold_outcome(client: MlflowClient, run_id: str) -> dict[str, Any]:
    """What the parent aggregates of one logged fold, read back from its child run (the one
    store every worker shares): ``{"fold", "run_id", "result", "records", "model_uri"}``."""
    run = client.get_run(run_id)
    with tempfile.TemporaryDirectory() as folder:
        result = json.loads(
            Path(client.download_artifacts(run_id, RESULT_FILE, folder)).read_text(encoding="utf-8")
        )
        names = {a.path for a in client.list_artifacts(run_id)}
        records = (
            read_metrics_jsonl(client.download_artifacts(run_id, METRICS_FILE, folder))
            if METRICS_FILE in names
            else []
        )
    return {
        "fold": int(run.data.tags[FOLD_TAG]),
        "run_id": run_id,
        "result": result,
        "records": records,
        "model_uri": run.data.tags.get(MODEL_URI_TAG),
    }


def log_parent_summary(
    client: MlflowClient, run_id: str, corpus: str, outcomes: list[dict[str, Any]], labels: tuple[str, ...]
) -> dict[str, float]:
    """Per-fold and mean ± std WA/UA/F1, summed test confusion and all folds' curves on the parent."""
    per_fold = {o["fold"]: headline_scores(o["result"]) for o in outcomes}
    summary = fold_summary(per_fold)
    metrics = [
        Metric(fold_metric_name(k, m), v, 0, 0) for k, scores in per_fold.items() for m, v in scores.items()
    ]
    metrics += [Metric(name, value, 0, 0) for name, value in summary.items()]
    log_batch(client, run_id, metrics=metrics)
    confusion = summed_confusion(o["result"]["test"]["confusion"] for o in outcomes)
    title = f"{corpus}: test confusion summed over {len(outcomes)} folds"
    client.log_figure(run_id, confusion_figure(confusion, labels, title), "figures/confusion_summed.png")
    curves = training_curves_figure({o["fold"]: o["records"] for o in outcomes}, f"{corpus}: training curves")
    client.log_figure(run_id, curves, CURVES_PNG)
    return summary
