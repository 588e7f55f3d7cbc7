"""A training's MLflow runs: the parent run of a manifest version, recipe and folds (found again by
its train key when a rerun resumes), one child run per fold logged from its fold folder and read
back by the parent, the parent's fold summary and its end. The release model's logging and
registration: flows/release.py.

Outages: the worker writes its epoch metrics to ``metrics.jsonl`` on local disk while it trains,
and the flow forwards them to MLflow only after the fold ends. That file is the buffer: an MLflow
outage during training loses nothing. A request that outlasts MLflow's own HTTP retries
(flows/tracking.py) fails the task, and Prefect's task retries or a rerun resume where it stopped.

Figures are built in flows/figures.py, fold statistics in ser_model/metrics.py.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from flows.figures import confusion_figure, coverage_figure, reliability_figure, training_curves_figure
from flows.mlflow_ui import run_url
from flows.promote import protocol_name
from flows.provenance import package_versions
from flows.tracking import (
    PARENT_RUN_ID_TAG,
    epoch_metrics,
    find_run,
    flatten_params,
    get_or_create_experiment,
    log_batch,
)
from ser_model.calibration import CALIBRATION_FIGURES, calibration_means, pooled_coverage, pooled_reliability
from ser_model.config import SERConfig
from ser_model.launch import METRICS_FILE, RESULT_FILE, fold_folder_name, fold_times, read_result
from ser_model.metrics import (
    fold_metric_name,
    fold_summary,
    headline_scores,
    selection_rule,
    summary_name,
    summed_confusion,
)
from ser_stack.names import (
    BACKBONE_TAG,
    CORPUS_TAG,
    FINGERPRINT_TAG,
    FOLD_TAG,
    INIT_TAG,
    LOGGED_TAG,
    MODEL_URI_TAG,
    PRESET_TAG,
    PROTOCOL_TAG,
    SELECTION_TAG,
    TRAIN,
    TRAIN_KEY_TAG,
    experiment_name,
    job_name,
)
from ser_stack.provenance import code_version
from ser_stack.settings import REPO_ROOT

if TYPE_CHECKING:
    from flows.manifest_version import ManifestVersion

log = logging.getLogger(__name__)

UNFINISHED = ("RUNNING", "SCHEDULED", "FAILED", "KILLED")
"""Statuses of a parent run that a rerun with the same inputs resumes."""
CONFUSION_PNG, CURVES_PNG = "figures/confusion.png", "figures/training_curves.png"
RELIABILITY_PNG, COVERAGE_PNG = "figures/reliability.png", "figures/coverage.png"


def calibration_metric(name: str) -> str:
    """The MLflow metric of a calibration figure (`ser_model.calibration.CALIBRATION_FIGURES`)."""
    return f"calibration.{name}"


def tested_calibrations(outcomes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The calibration blocks of fold outcomes that were judged on test speakers (have ``ECE_after``)."""
    return [o["result"]["calibration"] for o in outcomes if "ECE_after" in o["result"].get("calibration", {})]


def log_calibration_figures(
    client: MlflowClient, run_id: str, calibrations: list[dict[str, Any]], title: str
) -> None:
    """The reliability diagram (before/after, with counts) and the coverage curve of the calibration
    blocks pooled (one fold's, or every fold's on the parent)."""
    before = pooled_reliability([c["reliability_before"] for c in calibrations])
    after = pooled_reliability([c["reliability_after"] for c in calibrations])
    client.log_figure(run_id, reliability_figure(before, after, f"{title}: reliability"), RELIABILITY_PNG)
    coverage = pooled_coverage([c["coverage"] for c in calibrations])
    client.log_figure(run_id, coverage_figure(coverage, f"{title}: coverage"), COVERAGE_PNG)


def train_key(
    corpus: str,
    fingerprint: str,
    config: SERConfig,
    folds: list[int],
    release: bool,
    audio_root: str,
    init: str | None = None,
) -> str:
    """sha256 naming a training job by its inputs (``init``: the model it starts from, pinned by
    flows/warm_start.py; a training from scratch keys as before it existed): the same inputs find
    the same parent run."""
    inputs = dict(corpus=corpus, fingerprint=fingerprint, config=config.to_dict(), folds=folds)
    inputs |= {"init": init} if init else {}
    payload = json.dumps({**inputs, "release": release, "root": audio_root}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


@dataclass(frozen=True)
class ParentRun:
    """A training's parent run: its experiment, its id, whether a rerun resumed it, its address."""

    experiment_id: str
    run_id: str
    resumed: bool
    url: str

    def parameters(self) -> dict[str, str]:
        """What a fold's flow run receives to log its child run under this one."""
        return {"experiment_id": self.experiment_id, "parent_run_id": self.run_id}


def parent_run_tags(
    data: ManifestVersion, preset: str, config: SERConfig, folds: list[int], key: str
) -> dict[str, str]:
    """The parent run's tags: the data, the recipe, the train key, the protocol and selection rule
    a registered version carries (flows/promote.py), the code and package versions."""
    return {
        CORPUS_TAG: data.corpus,
        FINGERPRINT_TAG: data.fingerprint,
        PRESET_TAG: preset,
        BACKBONE_TAG: config.model.backbone,
        TRAIN_KEY_TAG: key,
        PROTOCOL_TAG: protocol_name(data.corpus, len(data.fold_numbers), folds),
        SELECTION_TAG: selection_rule(config.train.select_metric),
        **code_version(REPO_ROOT),
        **package_versions(),
    }


def parent_run_params(
    data: ManifestVersion, config: SERConfig, folds: list[int], release: bool
) -> dict[str, str]:
    """The parent run's params: the whole config, the data's fingerprint and size, the folds."""
    return {
        **flatten_params(config.to_dict()),
        "data.fingerprint": data.fingerprint,
        "data.utterances": str(len(data.manifest)),
        "folds": json.dumps(folds),
        "release": str(release),
    }


def start_parent_run(
    client: MlflowClient,
    data: ManifestVersion,
    preset: str,
    config: SERConfig,
    folds: list[int],
    release: bool,
    init: str | None = None,
) -> ParentRun:
    """The unfinished parent run with the same train key in experiment ``ser-<corpus>``, running
    again, or a new one with its tags and params (and ``ser.init`` when it starts from ``init``)."""
    experiment_id = get_or_create_experiment(client, experiment_name(data.corpus))
    key = train_key(data.corpus, data.fingerprint, config, folds, release, data.root, init)
    run_id = find_run(client, experiment_id, {TRAIN_KEY_TAG: key}, statuses=UNFINISHED)
    resumed = run_id is not None
    if resumed:
        client.update_run(run_id, status="RUNNING")
    else:
        tags = parent_run_tags(data, preset, config, folds, key) | ({INIT_TAG: init} if init else {})
        run_id = client.create_run(
            experiment_id, tags=tags, run_name=job_name(TRAIN, data.corpus)
        ).info.run_id
        log_batch(client, run_id, params=parent_run_params(data, config, folds, release))
    return ParentRun(experiment_id, run_id, resumed, run_url(client.tracking_uri, experiment_id, run_id))


@contextmanager
def parent_run_ends(
    client: MlflowClient, run_id: str, logger: logging.Logger | logging.LoggerAdapter
) -> Iterator[None]:
    """Mark the parent run FINISHED when the block completes, FAILED when anything ends it (the
    exception is raised again); a tracking server that refuses the FAILED mark is a warning."""
    try:
        yield
        client.set_terminated(run_id, "FINISHED")
    except BaseException:
        try:
            client.set_terminated(run_id, "FAILED")
        except Exception as err:  # the tracking server may be the reason we failed
            logger.warning("could not mark MLflow run %s FAILED: %s", run_id, err)
        raise


def fold_run(client: MlflowClient, experiment_id: str, parent_id: str, fold: int) -> tuple[str | None, bool]:
    """(child run id or None, whether it is completely logged) of ``fold`` under the parent run."""
    run_id = find_run(client, experiment_id, {PARENT_RUN_ID_TAG: parent_id, FOLD_TAG: str(fold)})
    if run_id is None:
        return None, False
    return run_id, client.get_run(run_id).data.tags.get(LOGGED_TAG) == "true"


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
    # pyfunc, flows/release.py) re-logs each metric at its own step, 0, tagged with the model's id
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
    calibration = result.get("calibration", {})
    summary += [
        Metric(calibration_metric(name), float(calibration[name]), 0, step)
        for name in CALIBRATION_FIGURES
        if name in calibration
    ]
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
    if "ECE_after" in calibration:
        log_calibration_figures(client, run_id, [calibration], f"{corpus} {name} (test speakers)")
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
    """Per-fold and mean ± std WA/UA/F1, summed test confusion and all folds' curves on the parent;
    the folds' mean calibration figures (``calibration.<name>_mean``, also in the returned summary)
    and their pooled reliability diagram and coverage curve."""
    per_fold = {o["fold"]: headline_scores(o["result"]) for o in outcomes}
    summary = fold_summary(per_fold)
    metrics = [
        Metric(fold_metric_name(k, m), v, 0, 0) for k, scores in per_fold.items() for m, v in scores.items()
    ]
    calibrations = tested_calibrations(outcomes)
    summary |= {
        summary_name(calibration_metric(k), "mean"): v for k, v in calibration_means(calibrations).items()
    }
    metrics += [Metric(name, value, 0, 0) for name, value in summary.items()]
    log_batch(client, run_id, metrics=metrics)
    if calibrations:
        log_calibration_figures(client, run_id, calibrations, f"{corpus}: {len(calibrations)} folds")
    confusion = summed_confusion(o["result"]["test"]["confusion"] for o in outcomes)
    title = f"{corpus}: test confusion summed over {len(outcomes)} folds"
    client.log_figure(run_id, confusion_figure(confusion, labels, title), "figures/confusion_summed.png")
    curves = training_curves_figure({o["fold"]: o["records"] for o in outcomes}, f"{corpus}: training curves")
    client.log_figure(run_id, curves, CURVES_PNG)
    return summary
