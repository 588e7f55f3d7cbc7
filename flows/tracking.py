"""MLflow through an explicit ``MlflowClient`` and explicit run ids (no fluent active-run state),
so Prefect tasks running in threads cannot mix runs up: params flattened to MLflow's limits,
metrics from epoch records, batches in the sizes MLflow accepts, experiments created once, runs
found again by their tags. A training's runs (flows/training_runs.py), a study's, the monitor's
and an evaluation's are built on these.

Each request rides out a short outage by MLflow's own HTTP retries
(``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` and ``_BACKOFF_FACTOR``, set for the stack's processes in
infra/ser_infra/environment.py). Nothing here reads the environment, so no credential can reach params, tags or
artifacts.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from flows.mlflow_ui import EXPERIMENT_TAGS
from ser_model.metrics import metric_leaves

MLFLOW_PARAM_VALUE_LIMIT = 6000
"""MLflow 3 rejects param values longer than this."""

BATCH_LIMIT = 1000
"""MLflow's log_batch accepts at most 1000 metrics per call."""

PARENT_RUN_ID_TAG = "mlflow.parentRunId"
"""MLflow's own tag that nests a child run under its parent in the UI."""


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
