"""The ``monitor`` flow: before a training, how does the champion do on the new data?

    monitor(corpus, manifest_version)  champion ``ser-<corpus>@champion`` and the manifest it trained
                                       on (its version's ``ser.data_fingerprint``) → rows of the new
                                       manifest it never trained on (by audio sha256) → score and
                                       drift (ser_model/monitor.py) → MLflow run + Prefect artifact

The train flow runs it first (so ``retrain-nightly`` and the automation after ingest both do), and
passes the MLflow run to promotion, whose decision quotes it. It can also run alone
(``from flows.monitor import monitor``).

MLflow: a run in experiment ``ser-<corpus>`` named ``monitor-<corpus>``, tagged
``ser.run_kind=monitor``, ``ser.champion_version``, ``ser.monitor.manifest`` (the new data) and
``ser.monitor.champion_manifest``, with metrics ``new_rows``, ``UA``, ``WA``, ``macro_f1``,
``recall.<class>``, ``champion_UA_mean`` (the champion's cross-validated fold mean), ``UA_gap``,
``degraded`` and ``drift.<feature>`` (KS statistic or total variation, data_contracts/drift.py; the
champion's calibrated confidence on the new rows against its validation rows is the feature
``calibrated_confidence``), and figures ``figures/confusion_new_rows.png`` and ``figures/drift_<feature>.png``.

Flag: when the champion's UA on the new rows is more than ``margin`` below its fold mean, the
artifact ``monitor-<corpus>`` says so and the flow run ends in the state :data:`DEGRADED_STATE`
(a Completed state by that name, so the caller goes on), which emits the Prefect event
``prefect.flow-run.Degraded`` an automation can act on (docs/MONITOR.md has an example).
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.events import DeploymentEventTrigger
from prefect.states import Completed

from flows import tracking as t
from flows.cli import download_checkpoint
from flows.figures import confusion_figure, drift_figure
from flows.manifest_version import ManifestVersion, open_manifest_version
from flows.mlflow_ui import run_url
from flows.promote import current_champion
from flows.storage import ManifestVersionNotFoundError
from ser_model.calibration import read_calibration
from ser_model.monitor import DEFAULT_UA_MARGIN, MonitorResult, is_numeric, watch_champion
from ser_stack import names as n
from ser_stack.settings import StackSettings

DEGRADED_STATE = "Degraded"
"""Name of the (Completed) final state of a monitor run that flagged the champion."""
DEGRADED_EVENT = f"prefect.flow-run.{DEGRADED_STATE}"
"""The event Prefect emits when a monitor run ends flagged: what an automation listens for."""


def degraded_trigger(corpus: str, parameters: dict[str, Any] | None = None) -> DeploymentEventTrigger:
    """A deployment trigger that acts on a flagged champion: it runs the deployment (with
    ``parameters``) when a monitor flow run of ``corpus`` ends in :data:`DEGRADED_STATE`. The
    example of docs/MONITOR.md: ``train-<corpus>`` on every fold, a full-protocol retraining."""
    return DeploymentEventTrigger(
        name=f"act-on-degraded-{corpus}-champion",
        description=f"the champion of {corpus} scored more than the margin below its fold mean on new data",
        expect={DEGRADED_EVENT},
        match={"prefect.resource.name": n.job_name(n.MONITOR, corpus)},
        match_related={"prefect.resource.role": "flow", "prefect.resource.name": "monitor"},
        parameters=parameters or {},
    )


@dataclass(frozen=True)
class MonitorRun:
    """A finished monitor: its MLflow run, the champion it watched and what it found."""

    run_id: str
    url: str
    champion_version: str
    result: MonitorResult

    def quote(self) -> str:
        """The sentence a promotion decision quotes."""
        return f"champion version {self.champion_version} on the new data (MLflow run {self.run_id}): {self.result.verdict()}"


def monitor_markdown(corpus: str, run: MonitorRun) -> str:
    """The Prefect artifact: the verdict first (DEGRADED when flagged), scores, drift, the run's URL."""
    result = run.result
    title = (
        f"Champion of {corpus} degraded on new data"
        if result.degraded
        else f"Champion of {corpus} on new data"
    )
    lines = "\n".join(f"- {line}" for line in result.report_lines())
    return f"# {title}\n\nChampion version {run.champion_version}. {result.verdict()}.\n\n{lines}\n\nMLflow run: {run.url}\n"


def log_monitor_run(
    client: MlflowClient,
    data: ManifestVersion,
    champion_version: str,
    champion_fingerprint: str,
    result: MonitorResult,
    margin: float,
) -> tuple[str, str]:
    """The monitor's MLflow run of the new data ``data`` (see the module doc); returns (run id, URL)."""
    corpus = data.corpus
    experiment_id = t.get_or_create_experiment(client, n.experiment_name(corpus))
    tags = {
        n.RUN_KIND_TAG: n.RUN_KIND_MONITOR,
        n.CORPUS_TAG: corpus,
        n.CHAMPION_VERSION_TAG: champion_version,
        n.MONITOR_MANIFEST_TAG: data.fingerprint,
        n.MONITOR_CHAMPION_MANIFEST_TAG: champion_fingerprint,
        n.MONITOR_VERDICT_TAG: result.verdict(),
        n.MONITOR_DEGRADED_TAG: str(result.degraded).lower(),
    }
    run_id = client.create_run(experiment_id, tags=tags, run_name=n.job_name(n.MONITOR, corpus)).info.run_id
    metrics = [Metric(k, v, 0, 0) for k, v in result.flat_metrics().items()]
    t.log_batch(client, run_id, metrics=metrics, params={"margin": f"{margin}"})
    report = {
        "verdict": result.verdict(),
        "metrics": result.metrics,
        "drift": result.drift,
        "statistics": {name: "ks" if is_numeric(name) else "total_variation" for name in result.drift},
    }
    client.log_dict(run_id, report, "monitor.json")
    if result.metrics is not None:
        title = f"{corpus}: champion v{champion_version} on {result.new_rows} new rows"
        figure = confusion_figure(np.asarray(result.metrics["confusion"]), result.labels, title)
        client.log_figure(run_id, figure, "figures/confusion_new_rows.png")
    for feature, value in result.drift.items():
        figure = drift_figure(feature, *result.samples[feature], value)
        client.log_figure(run_id, figure, f"figures/drift_{feature}.png")
    client.set_terminated(run_id, "FINISHED")
    return run_id, run_url(client.tracking_uri, experiment_id, run_id)


def not_watched(corpus: str, champion_version: str | None, reason: str, warn: bool = True) -> dict[str, Any]:
    """A monitor with nothing it can watch: the reason in the log (a warning with ``warn``) and the
    artifact, and as the sentence the promotion decision quotes."""
    get_run_logger().log(logging.WARNING if warn else logging.INFO, "%s", reason)
    create_markdown_artifact(
        f"# Champion of {corpus} not watched\n\n{reason}\n",
        key=n.job_name(n.MONITOR, corpus),
        description=f"{n.registered_model_name(corpus)}@champion on new data",
    )
    return {"champion_version": champion_version, "quote": reason}


@flow(name="monitor", flow_run_name="monitor-{corpus}")
def monitor(
    corpus: str, manifest_version: str = "latest", root: str | None = None, margin: float = DEFAULT_UA_MARGIN
) -> Any:
    """Score ``ser-<corpus>@champion`` on the rows of ``manifest_version`` it never trained on and
    measure drift (module doc). Returns ``{"run_id", "url", "champion_version", "new_rows", "UA",
    "degraded", "quote"}``, or only ``champion_version`` and ``quote`` when nothing can be watched
    (:func:`not_watched`); flagged, the run ends in state :data:`DEGRADED_STATE` with the same result."""
    logger = get_run_logger()
    settings = StackSettings.from_env()
    client = MlflowClient(settings.tracking_uri)
    name = n.registered_model_name(corpus)
    try:
        champion = current_champion(client, name)
    except ValueError as err:  # a champion whose tags do not say what it was trained on
        return not_watched(corpus, None, f"not watched: {err}")
    if champion is None:
        return not_watched(corpus, None, f"not watched: {name} has no champion yet", warn=False)
    data = open_manifest_version(corpus, manifest_version, root)
    audio_root = data.local_audio_root(settings.state_dir)
    try:
        trained_on = open_manifest_version(corpus, champion.fingerprint)
    except (ManifestVersionNotFoundError, ValueError) as err:
        return not_watched(
            corpus,
            champion.version,
            f"not watched: champion version {champion.version} was trained on manifest {champion.fingerprint}, "
            f"whose rows or audio cannot be read now ({err})",
        )
    trained_on_root = trained_on.local_audio_root(settings.state_dir)
    from ser_model.ensemble import load_model

    with tempfile.TemporaryDirectory(prefix="ser-monitor-") as scratch:
        folder = download_checkpoint(f"models:/{name}/{champion.version}", Path(scratch))
        model = load_model(folder)
        result = watch_champion(
            model,
            data.manifest,
            audio_root,
            trained_on.manifest,
            trained_on.folds,
            trained_on_root,
            champion.ua_mean,
            margin,
            calibration=read_calibration(folder),
        )
    run_id, url = log_monitor_run(client, data, champion.version, champion.fingerprint, result, margin)
    run = MonitorRun(run_id, url, champion.version, result)
    for line in result.report_lines():
        logger.info("%s", line)
    logger.info("MLflow run %s", url)
    create_markdown_artifact(
        monitor_markdown(corpus, run),
        key=n.job_name(n.MONITOR, corpus),
        description=f"{name}@champion on new data",
    )
    summary = {
        "run_id": run_id,
        "url": url,
        "champion_version": champion.version,
        "new_rows": result.new_rows,
        "UA": None if result.metrics is None else result.metrics["UA"],
        "degraded": result.degraded,
        "quote": run.quote(),
    }
    if result.degraded:
        return Completed(message=result.verdict(), name=DEGRADED_STATE, data=summary)
    return summary


def watch_before_training(data: ManifestVersion, margin: float) -> str:
    """Run :func:`monitor` as a subflow of a training, on the manifest version the training opened
    (the subflow opens it again from its fingerprint and root), and return the sentence its
    promotion quotes. A monitor that fails does not stop the training: the sentence says why."""
    state = monitor(data.corpus, data.fingerprint, root=data.root, margin=margin, return_state=True)
    if not state.is_completed():
        get_run_logger().warning("monitor of %s ended %s: %s", data.corpus, state.name, state.message)
        return f"monitor run ended {state.name}: {state.message}"
    return state.result()["quote"]
