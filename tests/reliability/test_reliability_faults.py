"""Faults injected into real processes: the MLflow server crashes while a fold trains, and the
training worker is SIGKILLed between two epochs.

1. MLflow down mid-training (live stack; a private MLflow server the test SIGKILLs): the train
   flow fails with a message naming the tracking server, no model version is registered, the
   fold's checkpoints and metrics stay on disk; once MLflow is back, the same flow call resumes
   the same parent run, does not train the finished fold again, sends every buffered epoch
   metric and registers exactly one version. A secret planted in the environment appears
   nowhere the run left a trace (MLflow, Prefect, the state folder, the stack's logs).
2. Worker SIGKILLed after epoch k's checkpoint: the rerun with the same output folder ends with
   weights bit-identical to an uninterrupted run's.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from tests.train.synthetic import tiny_config, write_synthetic_corpus

REPO_ROOT = Path(__file__).resolve().parents[2]

FAST = {
    "train.epochs": 3,
    "train.max_seconds": 1.5,
    "train.batch_size": 8,
    "train.lr": 1e-3,
    "model.fbank_dim": 32,
    "model.fbank_layers": 1,
    "model.fbank_heads": 2,
    "loss.supcon_proj_dim": 16,
}
ACTORS = range(1, 9)
"""8 RAVDESS actors make the protocol's 2 folds; one file per emotion and actor."""


def ravdess_subset(shared: Path, root: Path) -> Path:
    """One real file per emotion for each of ACTORS, copied into a RAVDESS layout."""
    for actor in ACTORS:
        folder = root / f"Actor_{actor:02d}"
        folder.mkdir(parents=True)
        for emotion in range(1, 9):
            source = sorted((shared / folder.name).glob(f"03-01-{emotion:02d}-*"))[0]
            shutil.copyfile(source, folder / source.name)
    return root


def publish_subset(root: Path, bucket) -> str:
    """Ingest `root` with the library and publish it to `bucket`; returns the fingerprint."""
    from data_contracts.ingest import run_ingest
    from flows.storage import publish_manifest

    result = run_ingest("ravdess", root, workers=1, progress=False)
    assert result.quarantine.empty, result.quarantine
    publish_manifest(
        "ravdess",
        result.fingerprint,
        result.manifest,
        result.quarantine,
        result.folds,
        result.report,
        str(root),
        bucket,
    )
    return result.fingerprint


def prefect_traces(flow_run_ids: list) -> str:
    """Parameters, log messages and artifacts of the flow runs, their subflows and tasks, as one text."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilter,
        FlowRunFilterParentFlowRunId,
        LogFilter,
        LogFilterFlowRunId,
    )

    texts = []
    with get_client(sync_client=True) as client:
        runs = [client.read_flow_run(run_id) for run_id in flow_run_ids]
        runs += client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[r.id for r in runs])
            )
        )
        ids = [r.id for r in runs]
        texts += [json.dumps(r.parameters, default=str) + (r.state.message or "") for r in runs]
        offset = 0
        while logs := client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=ids)), limit=200, offset=offset
        ):
            texts += [log.message for log in logs]
            offset += len(logs)
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=ids))
        )
        texts += [json.dumps(a.data, default=str) + (a.description or "") for a in artifacts]
    assert len(texts) > len(runs), "the flow runs left no logs: the search below would prove nothing"
    return "\n".join(texts)


def mlflow_traces(client: MlflowClient, download_dir: Path) -> str:
    """Params, tags, metric names and every artifact's bytes of every run, and the registry's
    versions, of the (private) tracking server, as one text."""
    texts = []
    for model in client.search_registered_models():
        texts.append(json.dumps(model.tags) + (model.description or ""))
        texts += [
            json.dumps(v.tags) + (v.description or "") + v.source
            for v in client.search_model_versions(f"name = '{model.name}'")
        ]
    for experiment in client.search_experiments():
        for run in client.search_runs([experiment.experiment_id], max_results=1000):
            texts += [
                json.dumps(run.data.params),
                json.dumps(run.data.tags),
                json.dumps(sorted(run.data.metrics)),
            ]
            local = Path(client.download_artifacts(run.info.run_id, "", str(download_dir / run.info.run_id)))
            texts += [p.read_bytes().decode("utf-8", "replace") for p in local.rglob("*") if p.is_file()]
    return "\n".join(texts)


def files_text(folders: list[Path]) -> str:
    """The bytes of every file under `folders` (logs, SQLite databases, run folders), as text."""
    return "\n".join(
        p.read_bytes().decode("utf-8", "replace")
        for folder in folders
        for p in folder.rglob("*")
        if p.is_file()
    )


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_mlflow_crashing_mid_training_loses_nothing_and_registers_no_half_model(
    private_mlflow, live_bucket, prefect_api, stack, shared_ravdess, tmp_path, monkeypatch
):
    from flows import train as train_module

    secret = f"planted-{uuid.uuid4().hex}"
    monkeypatch.setenv("SER_RELIABILITY_API_TOKEN", secret)
    monkeypatch.setenv("HF_TOKEN", secret)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", private_mlflow.tracking_uri)
    monkeypatch.setenv("SER_STATE_DIR", str(private_mlflow.state_dir))
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    monkeypatch.setenv(
        "SER_FOLD_RUNS", "inline"
    )  # folds as subflows here, so the patched worker below is the one that runs
    # no MLflow HTTP retries (MLFLOW_HTTP_REQUEST_MAX_RETRIES=0 above) and short Prefect task
    # retries (10 and 60 s) keep the test short
    monkeypatch.setattr(
        train_module, "train_worker", train_module.train_worker.with_options(retry_delay_seconds=[1, 1])
    )
    root = ravdess_subset(shared_ravdess, tmp_path / "ravdess")
    fingerprint = publish_subset(root, live_bucket)

    crashes: list[int] = []
    real_run_worker = train_module.run_worker

    def run_worker_crashing_mlflow_after_epoch_1(job, emit, on_epoch=lambda n: None, **kwargs):
        """The real worker; when its first epoch is on disk (and it trains on), MLflow crashes."""

        def epoch_done(done: int) -> None:
            if done >= 1 and not crashes:
                crashes.append(private_mlflow.crash())
            on_epoch(done)

        return real_run_worker(job, emit, epoch_done, **kwargs)

    monkeypatch.setattr(train_module, "run_worker", run_worker_crashing_mlflow_after_epoch_1)
    params = dict(corpus="ravdess", manifest_version=fingerprint, overrides=FAST, folds=[0], root=str(root))
    first = train_module.train(**params, return_state=True)

    assert crashes, "the worker never reported an epoch, MLflow was not crashed"
    assert first.is_failed(), f"the flow should fail while MLflow is down, got {first.type}"
    with pytest.raises(
        RuntimeError, match=r"fold run\(s\) did not complete: fold-0 \(MlflowException"
    ) as failure:
        first.result()
    port = str(private_mlflow.settings.mlflow_port)
    assert port in str(failure.value), (
        f"the error should name the tracking server {private_mlflow.tracking_uri}: {failure.value}"
    )
    (work,) = (private_mlflow.state_dir / "runs" / "ravdess").iterdir()
    fold = work / "fold-0"
    records = [json.loads(line) for line in (fold / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3], "training went on while MLflow was down"
    assert (fold / "result.json").is_file() and (
        fold / "checkpoints" / "last" / "model.safetensors"
    ).is_file()
    kept = {
        p: p.stat().st_mtime_ns
        for p in (
            fold / "metrics.jsonl",
            fold / "result.json",
            fold / "checkpoints" / "last" / "model.safetensors",
        )
    }

    private_mlflow.start()
    client = MlflowClient(private_mlflow.tracking_uri)
    assert client.search_model_versions("name = 'ser-ravdess'") == [], (
        "a model was registered by the failed run"
    )

    monkeypatch.setattr(train_module, "run_worker", real_run_worker)
    second = train_module.train(**params, return_state=True)
    outcome = second.result()

    assert outcome["parent_run_id"] == work.name, (
        "the rerun resumes the unfinished parent run and its fold folders"
    )
    assert {p: p.stat().st_mtime_ns for p in kept} == kept, "the finished fold was not trained again"
    (child,) = client.search_runs(
        [client.get_run(work.name).info.experiment_id],
        f"tags.`ser.fold` = '0' and tags.mlflow.parentRunId = '{work.name}'",
    )
    history = client.get_metric_history(child.info.run_id, "train.loss")
    assert sorted((m.step, m.value) for m in history) == [
        (r["epoch"], r["train"]["loss"]) for r in records
    ], "buffered metrics were sent"
    versions = client.search_model_versions("name = 'ser-ravdess'")
    assert [v.version for v in versions] == [outcome["version"]] and versions[0].tags[
        "ser.parent_run_id"
    ] == work.name
    assert client.get_model_version_by_alias("ser-ravdess", "champion").version == outcome["version"]
    assert client.get_run(work.name).info.status == "FINISHED"

    flow_runs = [first.state_details.flow_run_id, second.state_details.flow_run_id]
    prefect_text = prefect_traces(flow_runs)
    assert "result.json of an earlier attempt found; not training again" in prefect_text, (
        "task retries and the rerun reuse the fold"
    )
    held = "\n".join(
        [
            mlflow_traces(client, tmp_path / "downloads"),
            prefect_text,
            files_text([private_mlflow.state_dir, stack.state_dir / "logs"]),
        ]
    )
    assert work.name in held and "train.loss" in held, "the search covers what the runs wrote"
    for value in (secret, stack.secret_access_key):
        assert value and value not in held


# ----------------------------------------------------------------------------- worker SIGKILL


EPOCHS = 8
"""Many short epochs, so the kill after the first one lands well before the last."""


def worker_command(inputs: dict[str, Path], root: Path, out: Path) -> list[str]:
    """torchrun with one process running the fold-0 worker, as the train flow launches it."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=1",
        "-m",
        "ser_model.worker",
        "--config",
        str(inputs["config"]),
        "--manifest",
        str(inputs["manifest"]),
        "--folds",
        str(inputs["folds"]),
        "--fold",
        "0",
        "--audio-root",
        str(root),
        "--out",
        str(out),
    ]


def run_to_completion(command: list[str], env: dict[str, str]) -> None:
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def epochs_on_disk(out: Path) -> int:
    path = out / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.mark.slow
def test_sigkilled_worker_resumes_to_the_weights_of_an_uninterrupted_run(tmp_path):
    root = tmp_path / "audio"
    manifest, folds = write_synthetic_corpus(root, n_speakers=4, per_class=3)
    inputs = {
        "config": tmp_path / "config.json",
        "manifest": tmp_path / "manifest.parquet",
        "folds": tmp_path / "folds.parquet",
    }
    tiny_config(epochs=EPOCHS, grad_accum=2).to_json(inputs["config"])
    manifest.to_parquet(inputs["manifest"])
    folds.to_parquet(inputs["folds"])
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}

    run_to_completion(worker_command(inputs, root, tmp_path / "straight"), env)

    killed = tmp_path / "killed"
    process = subprocess.Popen(
        worker_command(inputs, root, killed),
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 240
    while epochs_on_disk(killed) < 1 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)
    assert process.wait(timeout=30) == -signal.SIGKILL, "the worker ended before it could be killed"
    done_before = epochs_on_disk(killed)
    print(f"\nworker SIGKILLed with {done_before} of {EPOCHS} epochs on disk")
    assert 1 <= done_before < EPOCHS and not (killed / "result.json").exists()

    run_to_completion(worker_command(inputs, root, killed), env)

    for folder in ("checkpoints/last", "best"):
        straight = load_file(str(tmp_path / "straight" / folder / "model.safetensors"))
        resumed = load_file(str(killed / folder / "model.safetensors"))
        assert straight.keys() == resumed.keys()
        assert all(torch.equal(straight[k], resumed[k]) for k in straight), (
            f"{folder} differs from the uninterrupted run"
        )
    straight_result = json.loads((tmp_path / "straight" / "result.json").read_text())
    resumed_result = json.loads((killed / "result.json").read_text())
    assert resumed_result["selected_epoch"] == straight_result["selected_epoch"]
    assert resumed_result["test"] == straight_result["test"]
    assert [
        json.loads(line)["epoch"] for line in (killed / "metrics.jsonl").read_text().splitlines()
    ] == list(range(1, EPOCHS + 1))
