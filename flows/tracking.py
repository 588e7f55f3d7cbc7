"""MLflow helpers for the train flow: params, epoch metrics, fold summaries, figures, tags.

Everything here talks to MLflow through an explicit ``MlflowClient`` and explicit run ids
(no fluent active-run state), so Prefect tasks running in threads cannot mix runs up.

Outages: the worker writes its epoch metrics to ``metrics.jsonl`` on local disk while it
trains, and the flow forwards them to MLflow only after the fold ends. That file is the
buffer: an MLflow outage during training loses nothing, and ``call_with_retry`` (plus the
Prefect task retries around it) re-sends once the server answers again.

Nothing here reads the environment, so no credential can reach params, tags or artifacts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from mlflow.entities import Metric, Param, RunTag  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from ser_model.config import SERConfig  # noqa: E402
from ser_model.launch import METRICS_FILE, RESULT_FILE, fold_folder_name, fold_times  # noqa: E402
from ser_model.metrics import HEADLINE_METRICS  # noqa: E402

log = logging.getLogger(__name__)

T = TypeVar("T")

PACKAGES = ("torch", "torchaudio", "transformers", "mlflow", "prefect", "pandas", "pandera", "numpy")

MLFLOW_PARAM_VALUE_LIMIT = 6000
"""MLflow 3 rejects param values longer than this."""

BATCH_LIMIT = 1000
"""MLflow's log_batch accepts at most 1000 metrics per call."""

RETRYABLE = (MlflowException, OSError, ConnectionError)

SCORES_VIEW = "ser-scores"
"""Name of the runs-list view, stored on every experiment, that shows the scores as columns."""
SCORE_COLUMNS = ("UA_mean", "WA_mean", "macro_f1_mean", "UA_std", "test.UA", "test.WA")
"""Parent runs carry the fold means, fold child runs their own test scores."""
EXPERIMENT_TAGS = {
    # MLflow 3 opens an experiment in GenAI mode (traces, "Detect Issues") unless told it is a
    # training experiment: by this tag, and in 3.17's UI by ?workflowType=machine_learning.
    "mlflow.experimentKind": "custom_model_development",
    # a shared view of the runs list (opened with ?viewStateShareKey=ser-scores): UA/WA columns
    f"mlflow.sharedViewState.{SCORES_VIEW}": json.dumps(
        {"selectedColumns": [f"metrics.`{m}`" for m in SCORE_COLUMNS]}
    ),
}
TRAINING_UI = "workflowType=machine_learning"


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


def _numeric_leaves(record: Mapping[str, Any], prefix: str = "") -> Iterable[tuple[str, float]]:
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from _numeric_leaves(value, f"{name}.")
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            yield name, float(value)


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
            for name, value in _numeric_leaves(record)
            if name != "epoch"
        )
    return metrics


def call_with_retry(
    fn: Callable[..., T], *args: Any, attempts: int = 6, delay_s: float = 2.0, **kwargs: Any
) -> T:
    """Call ``fn`` until it succeeds, at most ``attempts`` times, waiting ``delay_s · 2^i``
    between tries (defaults: about a minute in all, on top of MLflow's own HTTP retries);
    only tracking-server and connection errors are retried."""
    for attempt in range(1, attempts + 1):
        try:
            return fn(*args, **kwargs)
        except RETRYABLE as err:
            if attempt == attempts:
                raise
            wait = delay_s * 2 ** (attempt - 1)
            name = getattr(fn, "__name__", fn)
            log.warning(
                "%s failed (%s: %s); try %d of %d in %.0f s",
                name,
                type(err).__name__,
                err,
                attempt + 1,
                attempts,
                wait,
            )
            time.sleep(wait)
    raise AssertionError("unreachable")


def log_batch(
    client: MlflowClient,
    run_id: str,
    metrics: Iterable[Metric] = (),
    params: Mapping[str, str] | None = None,
    tags: Mapping[str, str] | None = None,
) -> None:
    """Send metrics, params and tags to a run in chunks MLflow accepts, retrying outages."""
    metrics = list(metrics)
    param_list = [Param(k, v) for k, v in (params or {}).items()]
    tag_list = [RunTag(k, str(v)) for k, v in (tags or {}).items()]
    for start in range(0, len(param_list), 100):
        call_with_retry(client.log_batch, run_id, params=param_list[start : start + 100])
    for start in range(0, len(tag_list), 100):
        call_with_retry(client.log_batch, run_id, tags=tag_list[start : start + 100])
    for start in range(0, len(metrics), BATCH_LIMIT):
        call_with_retry(client.log_batch, run_id, metrics=metrics[start : start + BATCH_LIMIT])


def fold_summary(fold_metrics: Mapping[int, Mapping[str, float]]) -> dict[str, float]:
    """Mean and spread over folds of each headline metric.

    For metric m over folds k = 1..K: ``m_mean = (1/K) Σ_k m_k`` and
    ``m_std = sqrt(Σ_k (m_k − m_mean)² / (K − 1))`` (sample standard deviation; 0 when K = 1).
    Returns ``{"UA_mean": …, "UA_std": …, "WA_mean": …, …, "n_folds": K}``.
    """
    if not fold_metrics:
        raise ValueError("fold_summary: no fold results; expected at least one fold's test metrics")
    summary: dict[str, float] = {"n_folds": float(len(fold_metrics))}
    for name in HEADLINE_METRICS:
        values = np.array([float(m[name]) for m in fold_metrics.values()])
        summary[f"{name}_mean"] = float(values.mean())
        summary[f"{name}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return summary


def summed_confusion(confusions: Iterable[Any]) -> np.ndarray:
    """Element-wise sum of per-fold confusion matrices (rows = true class, columns = predicted),
    all C×C for the same C."""
    stacked = [np.asarray(c, dtype=np.int64) for c in confusions]
    if not stacked:
        raise ValueError("summed_confusion: no confusion matrices given")
    shapes = {c.shape for c in stacked}
    if len(shapes) != 1 or stacked[0].ndim != 2 or stacked[0].shape[0] != stacked[0].shape[1]:
        raise ValueError(f"summed_confusion: expected square matrices of one shape, got {sorted(shapes)}")
    return np.sum(stacked, axis=0)


def confusion_figure(confusion: np.ndarray, labels: tuple[str, ...] | list[str], title: str) -> plt.Figure:
    """Confusion matrix heat map with counts and row-normalised recall in each cell."""
    confusion = np.asarray(confusion)
    recall = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    size = 1.2 + 0.7 * len(labels)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    image = ax.imshow(recall, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for i in range(confusion.shape[0]):
        for j in range(confusion.shape[1]):
            color = "white" if recall[i, j] > 0.5 else "black"
            ax.text(
                j,
                i,
                f"{confusion[i, j]}\n{recall[i, j]:.0%}",
                ha="center",
                va="center",
                fontsize=7,
                color=color,
            )
    fig.colorbar(image, ax=ax, label="recall (row-normalised)")
    fig.tight_layout()
    return fig


def training_curves_figure(records_by_fold: Mapping[int, list[Mapping[str, Any]]], title: str) -> plt.Figure:
    """One panel per numeric epoch quantity (losses, lr, validation WA/UA/F1), one line per fold."""
    leaves = (
        name
        for records in records_by_fold.values()
        for record in records
        for name, _ in _numeric_leaves(record)
    )
    names = sorted({name for name in leaves if name != "epoch"})
    if not names:
        names = ["(no epoch metrics)"]
    columns = min(3, len(names))
    rows = math.ceil(len(names) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.0 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        for fold, records in sorted(records_by_fold.items()):
            points = [
                (int(r.get("epoch", i)), dict(_numeric_leaves(r)).get(name)) for i, r in enumerate(records)
            ]
            points = [(e, v) for e, v in points if v is not None]
            if points:
                ax.plot(*zip(*points), marker="o", markersize=3, label=f"fold {fold}")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("epoch")
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def log_figure(client: MlflowClient, run_id: str, fig: plt.Figure, artifact_file: str) -> None:
    """Upload a figure as a PNG artifact (retrying outages) and free it."""
    try:
        call_with_retry(client.log_figure, run_id, fig, artifact_file)
    finally:
        plt.close(fig)


def code_version(repo_dir: str | Path) -> dict[str, str]:
    """Git commit of the code that trained (``unknown`` outside a git checkout) and whether the
    working tree had uncommitted changes."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", *args], cwd=repo_dir, capture_output=True, text=True, timeout=20, check=True
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip()

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {
        "ser.git_commit": commit or "unknown",
        "ser.git_dirty": "unknown" if status is None else str(bool(status)).lower(),
    }


def package_versions(packages: Iterable[str] = PACKAGES) -> dict[str, str]:
    """``{"ser.version.torch": "2.14.1", ...}`` for the packages that shape a result."""
    versions = {}
    for name in packages:
        try:
            versions[f"ser.version.{name}"] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[f"ser.version.{name}"] = "not installed"
    return versions


def get_or_create_experiment(client: MlflowClient, name: str) -> str:
    """Id of the experiment ``name``, created if missing (safe when two flows race), with
    EXPERIMENT_TAGS set, so the MLflow UI shows it as a training experiment with its scores."""
    experiment = call_with_retry(client.get_experiment_by_name, name)
    if experiment is None:
        try:
            return call_with_retry(client.create_experiment, name, tags=EXPERIMENT_TAGS)
        except MlflowException:
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    for key, value in EXPERIMENT_TAGS.items():
        if experiment.tags.get(key) != value:
            call_with_retry(client.set_experiment_tag, experiment.experiment_id, key, value)
    return experiment.experiment_id


def experiment_url(tracking_uri: str, experiment_id: str) -> str:
    """MLflow UI address of an experiment's runs list, in training mode, scores as columns."""
    return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs?{TRAINING_UI}&viewStateShareKey={SCORES_VIEW}"


def run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """MLflow UI address of one run, in training mode."""
    return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}?{TRAINING_UI}"


def model_url(tracking_uri: str, name: str) -> str:
    """MLflow UI address of a registered model (its versions and aliases), in training mode."""
    return f"{tracking_uri.rstrip('/')}/#/models/{name}?{TRAINING_UI}"


def find_run(
    client: MlflowClient, experiment_id: str, tags: Mapping[str, str], statuses: tuple[str, ...] | None = None
) -> str | None:
    """Id of the newest run in the experiment carrying all ``tags`` (optionally only runs in
    ``statuses``), or None."""
    conditions = [f"tags.`{key}` = '{value}'" for key, value in tags.items()]
    runs = call_with_retry(
        client.search_runs,
        [experiment_id],
        filter_string=" and ".join(conditions),
        order_by=["attributes.start_time DESC"],
        max_results=50,
    )
    for run in runs:
        if statuses is None or run.info.status in statuses:
            return run.info.run_id
    return None


UNFINISHED = ("RUNNING", "SCHEDULED", "FAILED", "KILLED")
"""Statuses of a parent run that a rerun with the same inputs resumes."""
MODEL_URI_TAG = "ser.model_uri"
"""On the release child run: the logged pyfunc model the parent registers."""


def fold_scores(result: Mapping[str, Any], split: str = "test") -> dict[str, float]:
    """The :data:`HEADLINE_METRICS` (``{"WA": …, "UA": …, "macro_f1": …}``) of one split of a fold's result.json."""
    metrics = result.get(split) or {}
    missing = [m for m in HEADLINE_METRICS if m not in metrics]
    if missing:
        raise ValueError(f"result.json has no {split} metric(s) {missing}; got keys {sorted(metrics)}")
    return {m: float(metrics[m]) for m in HEADLINE_METRICS}


def train_key(
    corpus: str, fingerprint: str, config: SERConfig, folds: list[int], release: bool, audio_root: str
) -> str:
    """sha256 naming a training job by its inputs: the same inputs find the same parent run."""
    inputs = {
        "corpus": corpus,
        "fingerprint": fingerprint,
        "config": config.to_dict(),
        "folds": folds,
        "release": release,
        "root": audio_root,
    }
    payload = json.dumps(inputs, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def protocol_name(corpus: str, n_folds: int, folds: list[int]) -> str:
    """What a mean UA was measured on, for people reading the registry; promotion compares the
    per-fold scores instead (``flows.promote``)."""
    return f"{corpus}: speaker-independent, {n_folds} folds, evaluated folds {','.join(map(str, folds))}, selection on validation speakers"


def start_parent_run(
    client: MlflowClient, experiment_id: str, tags: dict[str, str], params: dict[str, str]
) -> tuple[str, bool]:
    """(run id, resumed): the unfinished parent run with the same train key, or a new one with tags and params."""
    parent_id = find_run(client, experiment_id, {"ser.train_key": tags["ser.train_key"]}, statuses=UNFINISHED)
    if parent_id is not None:
        call_with_retry(client.update_run, parent_id, status="RUNNING")
        return parent_id, True
    parent_id = call_with_retry(
        client.create_run, experiment_id, tags=tags, run_name=f"train-{tags['ser.corpus']}"
    ).info.run_id
    log_batch(client, parent_id, params=params)
    return parent_id, False


def fold_run(client: MlflowClient, experiment_id: str, parent_id: str, fold: int) -> tuple[str | None, bool]:
    """(child run id or None, whether it is completely logged) of ``fold`` under the parent run."""
    run_id = find_run(client, experiment_id, {"mlflow.parentRunId": parent_id, "ser.fold": str(fold)})
    if run_id is None:
        return None, False
    return run_id, call_with_retry(client.get_run, run_id).data.tags.get("ser.logged") == "true"


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
    tags = {"mlflow.parentRunId": parent_id, "ser.fold": str(fold)}
    start_ms, end_ms = fold_times(out_dir)
    run_id, logged = fold_run(client, experiment_id, parent_id, fold)
    if logged:
        return run_id
    if run_id is None:
        run_id = call_with_retry(
            client.create_run,
            experiment_id,
            start_time=start_ms,
            tags={**tags, "ser.corpus": corpus},
            run_name=name,
        ).info.run_id
    result = json.loads((out_dir / RESULT_FILE).read_text(encoding="utf-8"))
    records = read_metrics_jsonl(out_dir / METRICS_FILE) if (out_dir / METRICS_FILE).exists() else []
    summary = []
    for split, prefix in (("valid", "selected.valid"), ("test", "test")):
        if result.get(split):
            summary += [Metric(f"{prefix}.{m}", v, 0, 0) for m, v in fold_scores(result, split).items()]
    params = {"fold": str(fold), "selected_epoch": str(result.get("selected_epoch"))}
    log_batch(client, run_id, metrics=epoch_metrics(records) + summary, params=params)
    for file in (RESULT_FILE, METRICS_FILE):
        if (out_dir / file).exists():
            call_with_retry(client.log_artifact, run_id, str(out_dir / file))
    split = "test" if result.get("test", {}).get("confusion") else "valid"
    if result.get(split, {}).get("confusion"):
        figure = confusion_figure(
            np.asarray(result[split]["confusion"]), labels, f"{corpus} {name} ({split} speakers)"
        )
        log_figure(client, run_id, figure, "figures/confusion.png")
    log_figure(
        client,
        run_id,
        training_curves_figure({fold: records}, f"{corpus} {name}"),
        "figures/training_curves.png",
    )
    call_with_retry(client.set_tag, run_id, "ser.logged", "true")
    call_with_retry(client.set_terminated, run_id, "FINISHED", end_time=end_ms)
    return run_id


def fold_outcome(client: MlflowClient, run_id: str) -> dict[str, Any]:
    """What the parent aggregates of one logged fold, read back from its child run (the one
    store every worker shares): ``{"fold", "run_id", "result", "records", "model_uri"}``."""
    run = call_with_retry(client.get_run, run_id)
    with tempfile.TemporaryDirectory() as folder:
        result = json.loads(
            Path(call_with_retry(client.download_artifacts, run_id, RESULT_FILE, folder)).read_text(
                encoding="utf-8"
            )
        )
        names = {a.path for a in call_with_retry(client.list_artifacts, run_id)}
        records = (
            read_metrics_jsonl(call_with_retry(client.download_artifacts, run_id, METRICS_FILE, folder))
            if METRICS_FILE in names
            else []
        )
    return {
        "fold": int(run.data.tags["ser.fold"]),
        "run_id": run_id,
        "result": result,
        "records": records,
        "model_uri": run.data.tags.get(MODEL_URI_TAG),
    }


def log_parent_summary(
    client: MlflowClient, run_id: str, corpus: str, outcomes: list[dict[str, Any]], labels: tuple[str, ...]
) -> dict[str, float]:
    """Per-fold and mean ± std WA/UA/F1, summed test confusion and all folds' curves on the parent."""
    per_fold = {o["fold"]: fold_scores(o["result"]) for o in outcomes}
    summary = fold_summary(per_fold)
    metrics = [Metric(f"fold_{k}.{m}", v, 0, 0) for k, scores in per_fold.items() for m, v in scores.items()]
    metrics += [Metric(name, value, 0, 0) for name, value in summary.items()]
    log_batch(client, run_id, metrics=metrics)
    confusion = summed_confusion(o["result"]["test"]["confusion"] for o in outcomes)
    title = f"{corpus}: test confusion summed over {len(outcomes)} folds"
    log_figure(client, run_id, confusion_figure(confusion, labels, title), "figures/confusion_summed.png")
    curves = training_curves_figure({o["fold"]: o["records"] for o in outcomes}, f"{corpus}: training curves")
    log_figure(client, run_id, curves, "figures/training_curves.png")
    return summary


def summary_markdown(
    corpus: str,
    fingerprint: str,
    outcomes: list[dict[str, Any]],
    summary: dict[str, float],
    version: str | None,
    decision: dict | None,
    rule: str,
) -> str:
    """The train flow's Prefect artifact: per-fold and mean ± std scores, selection rule, registration."""
    rows = "\n".join(
        f"| {o['fold']} | "
        + " | ".join(f"{fold_scores(o['result'])[m]:.4f}" for m in HEADLINE_METRICS)
        + " |"
        for o in outcomes
    )
    mean = " | ".join(f"{summary[f'{m}_mean']:.4f} ± {summary[f'{m}_std']:.4f}" for m in HEADLINE_METRICS)
    header = "| fold | " + " | ".join(HEADLINE_METRICS) + " |\n|---|" + "---|" * len(HEADLINE_METRICS)
    text = f"# Training {corpus}\n\ndata fingerprint `{fingerprint}`\n\n{header}\n{rows}\n| mean ± std | {mean} |\n\nCheckpoint selection: {rule}.\n"
    if version is not None:
        text += f"\nRegistered `ser-{corpus}` version {version}."
    if decision is not None:
        text += f" Promotion: {decision['reason']}."
    return text


def log_evaluation(
    experiment: str,
    run_name: str,
    params: Mapping[str, Any],
    metrics: Mapping[str, Any],
    tracking_uri: str | None = None,
) -> str:
    """Log one evaluation (`ser evaluate ... --mlflow-experiment NAME`) as a finished run of the
    experiment: its params, every finite numeric leaf of its metrics (``segment.UA``,
    ``boundary_error_s.median``, ...) and the whole metrics dict as ``evaluation.json``. Returns the run's URL."""
    client = MlflowClient(tracking_uri)
    experiment_id = get_or_create_experiment(client, experiment)
    run = call_with_retry(
        client.create_run, experiment_id, run_name=run_name, tags={"ser.kind": "evaluation"}
    )
    log_batch(
        client,
        run.info.run_id,
        epoch_metrics([metrics]),
        flatten_params({k: v for k, v in params.items() if v is not None}),
    )
    call_with_retry(client.log_dict, run.info.run_id, dict(metrics), "evaluation.json")
    call_with_retry(client.set_terminated, run.info.run_id)
    return run_url(client.tracking_uri, experiment_id, run.info.run_id)
