"""The train flow: cross-validated training of one corpus, tracked in MLflow, then a release
model registered as ``ser-<corpus>`` and promoted.

    manifest version (S3) → staged locally → one task per fold:
        torchrun -m ser_model.worker (subprocess, log streamed into the task log)
        → its metrics.jsonl / result.json forwarded to an MLflow child run
    → parent run: config params, per-fold and mean ± std WA/UA/F1, summed confusion, curves
    → release model (fold -1) → MLflow pyfunc → registry ``ser-<corpus>`` → promote

Resuming. The parent run is found again from a *train key* (sha256 of corpus, data
fingerprint, config, folds, release flag, audio root): a rerun with the same inputs while
the parent run is unfinished reuses it, and with it the fold folders
``<state>/runs/<corpus>/<parent run id>/fold-<k>`` where the worker keeps its checkpoints.
A fold whose ``result.json`` exists is not trained again; an interrupted one resumes from
its last epoch checkpoint (``ser_model.train.fit(resume=True)``).

Failures. Worker exit 3 = bad data (:class:`BadDataError`), exit 2 = bad arguments or config
(:class:`BadConfigError`): never retried. Any other non-zero
exit (killed worker, out of memory, NCCL) = :class:`WorkerInfraError`, retried by Prefect.
MLflow outages during training lose nothing: the worker writes metrics to disk and the fold
task forwards them once it ends, retrying while the server is away (a Prefect retry of the
fold task logs again without retraining).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact

from data_contracts.labels import CORPORA
from flows.limits import one_training_per_corpus
from flows.promote import PROTOCOL_TAG, UA_TAG, fold_score_tags, promote, registered_model_name
from flows.pyfunc import log_pyfunc
from flows.roots import configured_root, root_variable
from flows.settings import REPO_ROOT, StackSettings
from flows.storage import load_manifest_version, read_latest, resolve_version
from flows.tracking import (
    SUMMARY_METRICS,
    call_with_retry,
    code_version,
    confusion_figure,
    epoch_metrics,
    find_run,
    flatten_params,
    fold_summary,
    get_or_create_experiment,
    log_batch,
    log_figure,
    package_versions,
    read_metrics_jsonl,
    run_url,
    selection_rule,
    summed_confusion,
    training_curves_figure,
)
from ser_model.config import SELECT_KEYS, SERConfig
from ser_model.presets import DEFAULT_PRESET, experiment_config

RELEASE_FOLD = -1
BAD_DATA_EXIT = 3
BAD_CONFIG_EXIT = 2
UNFINISHED = ("RUNNING", "SCHEDULED", "FAILED", "KILLED")
SECRET_NAME = re.compile(r"SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL|ACCESS_KEY|AUTH|API_KEY", re.IGNORECASE)
TORCHRUN_EXITCODE = re.compile(r"exitcode\s*:\s*(-?\d+)")


class NotRetriedError(RuntimeError):
    """The worker refused its inputs: retrying with the same inputs cannot help."""


class BadDataError(NotRetriedError):
    """The worker rejected its data (exit 3)."""


class BadConfigError(NotRetriedError):
    """The worker rejected its arguments or configuration (exit 2)."""


class WorkerInfraError(RuntimeError):
    """The worker died for another reason (killed, out of memory, ...): worth a retry."""


def nproc_per_node(env: dict[str, str] | None = None) -> int:
    """Worker processes per fold: ``SER_NPROC_PER_NODE`` if set, else one per visible CUDA
    device, else one CPU process."""
    env = os.environ if env is None else env
    if env.get("SER_NPROC_PER_NODE"):
        count = int(env["SER_NPROC_PER_NODE"])
        if count < 1:
            raise ValueError(f"SER_NPROC_PER_NODE={count}: expected a positive number of processes")
        return count
    import torch

    return max(1, torch.cuda.device_count())


def worker_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The worker's environment: ours without credentials (it reads only local files)."""
    env = dict(os.environ if env is None else env)
    clean = {k: v for k, v in env.items() if not SECRET_NAME.search(k)}
    clean["PYTHONUNBUFFERED"] = "1"
    return clean


def torchrun_command(nproc: int, worker_args: list[str], module: str = "ser_model.worker") -> list[str]:
    """``torchrun --standalone --nproc_per_node=N -m <module> <args>`` with this interpreter
    (``--standalone`` picks a free rendezvous port, so folds of two flows can run at once)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", module, *worker_args]


def worker_exit_code(returncode: int, output_tail: str) -> int:
    """The worker's own exit code. torchrun exits 1 whatever its worker returned and prints
    the root cause as ``exitcode  : <n>``: take that when present."""
    if returncode in (0, BAD_DATA_EXIT):
        return returncode
    codes = [int(c) for c in TORCHRUN_EXITCODE.findall(output_tail)]
    return codes[-1] if codes else returncode


@dataclass(frozen=True)
class FoldJob:
    """Everything one fold's worker needs, as local paths."""

    corpus: str
    fold: int
    config_path: Path
    manifest_path: Path
    folds_path: Path
    audio_root: str
    out_dir: Path
    epochs: int

    @property
    def name(self) -> str:
        return "release" if self.fold == RELEASE_FOLD else f"fold-{self.fold}"

    def worker_args(self) -> list[str]:
        return [
            "--config", str(self.config_path),
            "--manifest", str(self.manifest_path),
            "--folds", str(self.folds_path),
            "--fold", str(self.fold),
            "--audio-root", self.audio_root,
            "--out", str(self.out_dir),
        ]


def run_worker(
    job: FoldJob,
    emit: Callable[[str], None],
    on_epoch: Callable[[int], None] = lambda n: None,
    module: str = "ser_model.worker",
    nproc: int | None = None,
) -> Path:
    """Run one fold's worker under torchrun, passing each output line to ``emit`` and the
    number of finished epochs to ``on_epoch`` as metrics.jsonl grows. Returns result.json.

    Raises BadDataError on exit 3, BadConfigError on exit 2, WorkerInfraError on any other
    failure (each with the log tail).
    """
    job.out_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = job.out_dir / "metrics.jsonl"
    command = torchrun_command(nproc or nproc_per_node(), job.worker_args(), module)
    tail: deque[str] = deque(maxlen=60)
    epochs_seen = -1
    with subprocess.Popen(
        command, cwd=REPO_ROOT, env=worker_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, errors="replace", bufsize=1,
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            line = line.rstrip()
            tail.append(line)
            emit(line)
            if metrics_path.exists():
                done = sum(1 for row in metrics_path.read_text(encoding="utf-8").splitlines() if row.strip())
                if done != epochs_seen:
                    epochs_seen = done
                    on_epoch(done)
        returncode = process.wait()
    text = "\n".join(tail)
    code = worker_exit_code(returncode, text)
    if code == 0:
        result = job.out_dir / "result.json"
        if not result.exists():
            raise WorkerInfraError(f"{job.corpus} {job.name}: worker exited 0 but wrote no {result}")
        return result
    if code == BAD_DATA_EXIT:
        raise BadDataError(f"{job.corpus} {job.name}: the worker rejected the data (exit 3, not retried):\n{text}")
    if code == BAD_CONFIG_EXIT:
        raise BadConfigError(f"{job.corpus} {job.name}: the worker rejected its arguments or config (exit 2, not retried):\n{text}")
    raise WorkerInfraError(f"{job.corpus} {job.name}: worker failed with exit code {code} (will retry; resumes from its last checkpoint):\n{text}")


def worth_retrying(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect retry condition: retry anything but refused inputs (bad data or config)."""
    try:
        state.result()
    except NotRetriedError:
        return False
    except Exception:
        return True
    return True


def fold_scores(result: dict[str, Any], split: str = "test") -> dict[str, float]:
    """``{"WA", "UA", "macro_f1"}`` of one split of a worker's result.json."""
    metrics = result.get(split) or {}
    missing = [m for m in SUMMARY_METRICS if m not in metrics]
    if missing:
        raise ValueError(f"result.json has no {split} metric(s) {missing}; got keys {sorted(metrics)}")
    return {m: float(metrics[m]) for m in SUMMARY_METRICS}


def selected_folds(requested: list[int] | None, available: list[int], where: str) -> list[int]:
    """The folds to train, sorted and each once: all ``available`` ones when ``requested`` is None.
    A fold listed twice would be counted twice in the summed confusion; unknown folds and an
    empty list raise ValueError naming ``where`` and the available folds."""
    folds = list(available) if requested is None else sorted({int(k) for k in requested})
    unknown = sorted(set(folds) - set(available))
    if unknown:
        raise ValueError(f"fold(s) {unknown} not in {where}; available folds: {available}")
    if not folds:
        raise ValueError(f"no folds to train; expected a non-empty subset of {available} (promotion compares their UA)")
    return folds


def train_key(corpus: str, fingerprint: str, config: SERConfig, folds: list[int], release: bool, audio_root: str) -> str:
    """sha256 naming a training job by its inputs: the same inputs find the same parent run."""
    inputs = {"corpus": corpus, "fingerprint": fingerprint, "config": config.to_dict(), "folds": folds, "release": release, "root": audio_root}
    payload = json.dumps(inputs, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def protocol_name(corpus: str, n_folds: int, folds: list[int]) -> str:
    """What a mean UA was measured on, for people reading the registry; promotion compares the
    per-fold scores instead (``flows.promote``)."""
    return f"{corpus}: speaker-independent, {n_folds} folds, evaluated folds {','.join(map(str, folds))}, selection on validation speakers"


FOLD_TIMES = "times.json"
"""Beside a fold's result.json: when its training started and ended (ms since the epoch), so its
MLflow run shows the training's real time span, although the run is created once training ended."""


def write_fold_times(out_dir: Path, start_ms: int, end_ms: int) -> None:
    (out_dir / FOLD_TIMES).write_text(json.dumps({"start_ms": start_ms, "end_ms": end_ms}))


def fold_times(out_dir: Path) -> tuple[int | None, int | None]:
    """(start, end) in ms recorded by :func:`write_fold_times`, or (None, None) when not recorded."""
    path = out_dir / FOLD_TIMES
    if not path.exists():
        return None, None
    times = json.loads(path.read_text())
    return int(times["start_ms"]), int(times["end_ms"])


def log_fold_run(
    client: MlflowClient,
    experiment_id: str,
    parent_id: str,
    job: FoldJob,
    result: dict[str, Any],
    records: list[dict[str, Any]],
    labels: tuple[str, ...],
) -> str:
    """Child run of one fold (created once; reused by a retry): epoch metrics, selected-epoch
    valid/test metrics, result.json, metrics.jsonl, confusion and curve figures; its start and
    end are the training's (:func:`fold_times`) when recorded."""
    tags = {"mlflow.parentRunId": parent_id, "ser.fold": str(job.fold)}
    start_ms, end_ms = fold_times(job.out_dir)
    run_id = find_run(client, experiment_id, tags)
    if run_id is None:
        run_id = call_with_retry(
            client.create_run, experiment_id, start_time=start_ms, tags={**tags, "ser.corpus": job.corpus}, run_name=job.name
        ).info.run_id
    elif call_with_retry(client.get_run, run_id).data.tags.get("ser.logged") == "true":
        return run_id
    summary = []
    for split, prefix in (("valid", "selected.valid"), ("test", "test")):
        if result.get(split):
            summary += [mlflow.entities.Metric(f"{prefix}.{m}", v, 0, 0) for m, v in fold_scores(result, split).items()]
    params = {"fold": str(job.fold), "selected_epoch": str(result.get("selected_epoch"))}
    log_batch(client, run_id, metrics=epoch_metrics(records) + summary, params=params)
    call_with_retry(client.log_artifact, run_id, str(job.out_dir / "result.json"))
    call_with_retry(client.log_artifact, run_id, str(job.out_dir / "metrics.jsonl"))
    split = "test" if result.get("test", {}).get("confusion") else "valid"
    if result.get(split, {}).get("confusion"):
        figure = confusion_figure(np.asarray(result[split]["confusion"]), labels, f"{job.corpus} {job.name} ({split} speakers)")
        log_figure(client, run_id, figure, "figures/confusion.png")
    log_figure(client, run_id, training_curves_figure({job.fold: records}, f"{job.corpus} {job.name}"), "figures/training_curves.png")
    call_with_retry(client.set_tag, run_id, "ser.logged", "true")
    call_with_retry(client.set_terminated, run_id, "FINISHED", end_time=end_ms)
    return run_id


@task(
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=[10, 60],
    retry_condition_fn=worth_retrying,
    task_run_name="{job.corpus}-{job.name}",
)
def train_fold(job: FoldJob, tracking_uri: str, experiment_id: str, parent_id: str, labels: tuple[str, ...]) -> dict[str, Any]:
    """One fold: train (or find the finished result of an earlier attempt), then log it."""
    logger = get_run_logger()
    result_path = job.out_dir / "result.json"
    if result_path.exists():
        logger.info("%s: result.json of an earlier attempt found; not training again", job.name)
    else:
        what = f"{job.corpus} {job.name}"
        progress = create_progress_artifact(0.0, key=f"train-{job.corpus}-{job.name}", description=f"epochs done of {what}")

        def on_epoch(done: int) -> None:
            update_progress_artifact(progress, min(100.0, 100.0 * done / job.epochs), description=f"{done}/{job.epochs} epochs of {what}")

        started_ms = int(time.time() * 1000)
        run_worker(job, emit=lambda line: logger.info("[%s] %s", job.name, line), on_epoch=on_epoch)
        write_fold_times(job.out_dir, started_ms, int(time.time() * 1000))
    result = json.loads(result_path.read_text(encoding="utf-8"))
    records = read_metrics_jsonl(job.out_dir / "metrics.jsonl") if (job.out_dir / "metrics.jsonl").exists() else []
    child = log_fold_run(MlflowClient(tracking_uri), experiment_id, parent_id, job, result, records, labels)
    return {"fold": job.fold, "run_id": child, "result": result, "records": records, "out_dir": str(job.out_dir)}


def log_parent_summary(
    client: MlflowClient, run_id: str, corpus: str, outcomes: list[dict[str, Any]], labels: tuple[str, ...]
) -> dict[str, float]:
    """Per-fold and mean ± std WA/UA/F1, summed test confusion and all folds' curves on the parent."""
    per_fold = {o["fold"]: fold_scores(o["result"]) for o in outcomes}
    summary = fold_summary(per_fold)
    metrics = [mlflow.entities.Metric(f"fold_{k}.{m}", v, 0, 0) for k, scores in per_fold.items() for m, v in scores.items()]
    metrics += [mlflow.entities.Metric(name, value, 0, 0) for name, value in summary.items()]
    log_batch(client, run_id, metrics=metrics)
    confusion = summed_confusion(o["result"]["test"]["confusion"] for o in outcomes)
    title = f"{corpus}: test confusion summed over {len(outcomes)} folds"
    log_figure(client, run_id, confusion_figure(confusion, labels, title), "figures/confusion_summed.png")
    curves = training_curves_figure({o["fold"]: o["records"] for o in outcomes}, f"{corpus}: training curves")
    log_figure(client, run_id, curves, "figures/training_curves.png")
    return summary


def register_release(tracking_uri: str, corpus: str, release: dict[str, Any], summary: dict[str, float], tags: dict[str, str]) -> str:
    """Log the release checkpoint as a pyfunc in the release child run, register it as
    ``ser-<corpus>`` and tag the version with its scores (``tags`` carry the per-fold ones promotion
    compares). Returns the version."""
    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri)
    name = registered_model_name(corpus)
    with mlflow.start_run(run_id=release["run_id"]):
        info = call_with_retry(log_pyfunc, Path(release["out_dir"]) / "best", registered_model_name=name)
    version = str(info.registered_model_version)
    scores = {f"ser.{name}": f"{summary[name]:.6f}" for name in ("UA_std", "WA_mean", "macro_f1_mean")}
    version_tags = {**tags, **scores, UA_TAG: f"{summary['UA_mean']:.6f}"}
    for key, value in version_tags.items():
        call_with_retry(client.set_model_version_tag, name, version, key, value)
    return version


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
    rows = "\n".join(f"| {o['fold']} | " + " | ".join(f"{fold_scores(o['result'])[m]:.4f}" for m in SUMMARY_METRICS) + " |" for o in outcomes)
    mean = " | ".join(f"{summary[f'{m}_mean']:.4f} ± {summary[f'{m}_std']:.4f}" for m in SUMMARY_METRICS)
    text = (
        f"# Training {corpus}\n\ndata fingerprint `{fingerprint}`\n\n"
        f"| fold | WA | UA | macro F1 |\n|---|---|---|---|\n{rows}\n| mean ± std | {mean} |\n\n{rule}.\n"
    )
    if version is not None:
        text += f"\nRegistered `ser-{corpus}` version {version}."
    if decision is not None:
        text += f" Promotion: {decision['reason']}."
    return text


def local_audio_root(corpus: str, fingerprint: str, report: dict[str, Any], root: str | None) -> str:
    """The corpus folder the manifest paths are relative to: ``root`` if given, else the root
    recorded at ingest (latest pointer, report), else the configured root (flows/roots.py); it
    must be a local folder (the worker reads files)."""
    pointer = read_latest(corpus) or {}
    recorded = pointer.get("root") if pointer.get("fingerprint") == fingerprint else None
    root = root or recorded or report.get("root") or (configured_root(corpus) or (None,))[0]
    if not root or str(root).startswith("s3://") or not Path(root).is_dir():
        raise ValueError(
            f"audio root {root!r} of {corpus} is not a local folder; pass the flow parameter root=DIR "
            f"or set the Prefect variable {root_variable(corpus)} (flows/roots.py)"
        )
    return str(root)


def start_parent_run(client: MlflowClient, experiment_id: str, tags: dict[str, str], params: dict[str, str]) -> str:
    """The unfinished parent run with the same train key (resumed), or a new one with tags and params."""
    logger = get_run_logger()
    parent_id = find_run(client, experiment_id, {"ser.train_key": tags["ser.train_key"]}, statuses=UNFINISHED)
    if parent_id is not None:
        call_with_retry(client.update_run, parent_id, status="RUNNING")
        logger.info("resuming unfinished MLflow parent run %s with the same inputs", parent_id)
        return parent_id
    parent_id = call_with_retry(client.create_run, experiment_id, tags=tags, run_name=f"train-{tags['ser.corpus']}").info.run_id
    log_batch(client, parent_id, params=params)
    logger.info("MLflow parent run %s: %s", parent_id, run_url(client.tracking_uri, experiment_id, parent_id))
    return parent_id


def stage_inputs(work: Path, config: SERConfig, manifest: pd.DataFrame, fold_table: pd.DataFrame) -> dict[str, Path]:
    """Write the worker's inputs (config JSON, manifest and fold Parquet) into the run folder."""
    work.mkdir(parents=True, exist_ok=True)
    paths = {"config_path": work / "config.json", "manifest_path": work / "manifest.parquet", "folds_path": work / "folds.parquet"}
    config.to_json(paths["config_path"])
    manifest.to_parquet(paths["manifest_path"], index=False)
    fold_table.to_parquet(paths["folds_path"], index=False)
    return paths


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
) -> dict[str, Any]:
    """Train ``corpus`` on a manifest version: cross-validation folds (default all), then the
    release model, registered as ``ser-<corpus>`` and promoted; one training of a corpus at a
    time (flows/limits.py). ``preset`` names the recipe (ser_model/presets.py: ``cpu-fbank``,
    ``paper-wavlm``); ``backbone`` (``fbank`` or ``hf:<id or folder>``) and ``overrides``
    (SERConfig dotted keys, ``{"train.epochs": 2}``) go on top. ``root``, the local corpus
    folder, defaults to the root recorded at ingest, else the configured root (flows/roots.py)."""
    logger = get_run_logger()
    if corpus not in CORPORA:
        raise ValueError(f"unknown corpus {corpus!r}; expected one of {', '.join(CORPORA)}")
    settings = StackSettings.from_env()
    fingerprint = resolve_version(corpus, manifest_version)
    manifest, fold_table, report = load_manifest_version(corpus, fingerprint)
    root = local_audio_root(corpus, fingerprint, report, root)
    config = experiment_config(corpus, preset, backbone=backbone, overrides=overrides)
    available = sorted(int(k) for k in fold_table["fold"].unique())
    folds = selected_folds(folds, available, f"the {corpus} protocol of manifest {fingerprint}")

    client = MlflowClient(settings.tracking_uri)
    experiment_id = get_or_create_experiment(client, f"ser-{corpus}")
    key = train_key(corpus, fingerprint, config, folds, release, str(root))
    protocol = protocol_name(corpus, len(available), folds)
    tags = {
        "ser.corpus": corpus,
        "ser.data_fingerprint": fingerprint,
        "ser.train_key": key,
        PROTOCOL_TAG: protocol,
        "ser.selection_rule": selection_rule(SELECT_KEYS[config.train.select_metric]),
        "ser.backbone": config.model.backbone,
        "ser.preset": preset,
        **code_version(REPO_ROOT),
        **package_versions(),
    }
    params = {
        **flatten_params(config.to_dict()),
        "data.fingerprint": fingerprint,
        "data.utterances": str(len(manifest)),
        "folds": json.dumps(folds),
        "release": str(release),
    }
    parent_id = start_parent_run(client, experiment_id, tags, params)

    try:
        paths = stage_inputs(settings.state_dir / "runs" / corpus / parent_id, config, manifest, fold_table)

        def job(k: int) -> FoldJob:
            out_dir = paths["config_path"].parent / ("fold-release" if k == RELEASE_FOLD else f"fold-{k}")
            return FoldJob(corpus=corpus, fold=k, audio_root=root, out_dir=out_dir, epochs=config.train.epochs, **paths)

        outcomes = [train_fold(job(k), settings.tracking_uri, experiment_id, parent_id, config.labels) for k in folds]
        summary = log_parent_summary(client, parent_id, corpus, outcomes, config.labels)
        version = decision = None
        if release:
            released = train_fold(job(RELEASE_FOLD), settings.tracking_uri, experiment_id, parent_id, config.labels)
            version = call_with_retry(client.get_run, parent_id).data.tags.get("ser.registered_version")
            if version is None:
                version_tags = {k: tags[k] for k in ("ser.corpus", "ser.data_fingerprint", PROTOCOL_TAG, "ser.selection_rule", "ser.git_commit")}
                test_speakers = {k: fold_table.loc[(fold_table["fold"] == k) & (fold_table["role"] == "test"), "speaker"].tolist() for k in folds}
                version_tags.update(fold_score_tags({o["fold"]: fold_scores(o["result"])["UA"] for o in outcomes}, test_speakers, config.labels))
                version = register_release(settings.tracking_uri, corpus, released, summary, {**version_tags, "ser.parent_run_id": parent_id})
                call_with_retry(client.set_tag, parent_id, "ser.registered_version", version)
            else:
                logger.info("release model already registered as ser-%s version %s by an earlier attempt", corpus, version)
            decision = promote(corpus, version, margin=promote_margin)
        markdown = summary_markdown(corpus, fingerprint, outcomes, summary, version, decision, tags["ser.selection_rule"])
        create_markdown_artifact(markdown, key=f"train-{corpus}", description=f"cross-validation of {corpus}")
        call_with_retry(client.set_terminated, parent_id, "FINISHED")
    except BaseException:
        try:
            client.set_terminated(parent_id, "FAILED")
        except Exception as err:  # the tracking server may be the reason we failed
            logger.warning("could not mark MLflow run %s FAILED: %s", parent_id, err)
        raise
    return {"parent_run_id": parent_id, "fingerprint": fingerprint, "summary": summary, "version": version, "promotion": decision}
