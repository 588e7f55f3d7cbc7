"""Issue 14 "Done when", on the live stack: a RAVDESS subset uploaded to the stack's SeaweedFS is
ingested from its ``s3://`` root, and ``prefect deployment run train-ravdess`` trains it (each fold
run stages the audio into the sha256-keyed cache). With the ``folds`` queue at concurrency 2 the
two fold flow runs overlap in time; a second run at concurrency 1 (sequential) gives the same
parent run metrics and the same registered scores."""

from __future__ import annotations

import hashlib
import os
import statistics
import sys
import uuid

import pytest
from mlflow.tracking import MlflowClient

from flows.storage import load_manifest_version
from flows.training_runs import fold_outcome
from tests.e2e.test_train_ravdess import (
    FAST,
    build_subset,
    flow_run_state_and_logs,
    run_cli,
    run_deployment,
    user_shell_env,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FOLDS = [0, 1]
SHORT = {**FAST, "train.epochs": 1, "train.release_seeds": 1}
"""The pipeline-check recipe with one epoch and a release of one model: what is checked is where
and when the fold runs run and that both orders give the same scores, not what they learn."""


def fold_flow_runs(parent_id: str) -> list:
    """The train-fold flow runs started by the train run ``parent_id``."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent_id]))
        )
        return [r for r in runs if r.name.startswith(("ravdess-fold", "ravdess-release"))]


def test_folds_run_on_the_pool_from_an_s3_corpus(stack, shared_ravdess, repo_root, tmp_path, monkeypatch):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    for key, value in stack.client_env().items():
        monkeypatch.setenv(key, value)
    root = tmp_path / "ravdess"
    build_subset(shared_ravdess, root, files_per_emotion=1)
    bucket, prefix = f"ser-corpus-{uuid.uuid4().hex[:10]}", "ravdess"
    s3 = stack.s3_client()
    s3.create_bucket(Bucket=bucket)
    for path in sorted(root.rglob("*.flac")):
        s3.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(root).as_posix()}")
    s3_root = f"s3://{bucket}/{prefix}"

    env = {**os.environ, **stack.client_env(), "SER_FOLD_CONCURRENCY": "2"}
    run_cli([sys.executable, "-m", "flows.deploy"], env, repo_root)
    elsewhere, shell = tmp_path / "elsewhere", user_shell_env(stack)
    elsewhere.mkdir()
    run_deployment("ingest-ravdess", {"root": s3_root, "announce": False}, repo_root, elsewhere, {}, shell)
    params = {"overrides": SHORT, "folds": FOLDS}
    parallel = run_deployment("train-ravdess", params, repo_root, elsewhere, {}, shell)
    run_cli(
        [
            sys.executable,
            "-c",
            "from flows.deploy import ensure_fold_queue as q; import os; q(os.environ['SER_WORK_POOL'], 1)",
        ],
        {**env, "SER_WORK_POOL": stack.work_pool},
        repo_root,
    )
    sequential = run_deployment("train-ravdess", params, repo_root, elsewhere, {}, shell)

    with temporary_settings(updates={PREFECT_API_URL: stack.prefect_api_url}):
        states = {run: flow_run_state_and_logs(run) for run in (parallel, sequential)}
        assert [s for s, _ in states.values()] == ["Completed", "Completed"], {
            k: logs[-5:] for k, (_, logs) in states.items()
        }
        runs = {run: {r.name: r for r in fold_flow_runs(run)} for run in (parallel, sequential)}
    for folds in runs.values():
        assert set(folds) == {"ravdess-fold0", "ravdess-fold1", "ravdess-release"}, folds
        assert all(r.state.is_completed() for r in folds.values())
    first, second = runs[parallel]["ravdess-fold0"], runs[parallel]["ravdess-fold1"]
    assert max(first.start_time, second.start_time) < min(first.end_time, second.end_time), (
        "fold runs overlap at concurrency 2"
    )
    ordered = sorted(runs[sequential].values(), key=lambda r: r.start_time)
    assert all(a.end_time <= b.start_time for a, b in zip(ordered, ordered[1:])), (
        "one fold at a time at concurrency 1"
    )
    logs = "\n".join(states[parallel][1])
    assert "staged 64 files of ravdess" in logs and "sha256 verified" in logs

    client = MlflowClient(stack.tracking_uri)
    experiment = client.get_experiment_by_name("ser-ravdess")
    parents = client.search_runs(
        [experiment.experiment_id],
        "tags.`ser.data_fingerprint` != ''",
        order_by=["attributes.start_time DESC"],
        max_results=2,
    )
    late, early = parents
    assert late.data.tags["ser.train_key"] == early.data.tags["ser.train_key"]
    keys = [k for k in early.data.metrics if k.startswith("fold_") or k.endswith(("_mean", "_std"))]
    assert {"fold_0.UA", "fold_1.UA", "UA_mean"} <= set(keys)
    for key in keys:
        assert late.data.metrics[key] == pytest.approx(early.data.metrics[key], abs=1e-6), key
    versions = [
        client.get_model_version("ser-ravdess", run.data.tags["ser.registered_version"])
        for run in (early, late)
    ]
    score_tags = [
        {k: v for k, v in v.tags.items() if k.startswith(("ser.UA", "ser.WA", "ser.fold"))} for v in versions
    ]
    assert score_tags[0] and score_tags[0] == score_tags[1]
    # the release starts once both folds ended (even when they ran at once) and takes its
    # temperature from both: their median, as its result.json and the model folder say
    for parent in (early, late):
        children = client.search_runs(
            [experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
        )
        results = {
            int(c.data.tags["ser.fold"]): fold_outcome(client, c.info.run_id)["result"] for c in children
        }
        released = results.pop(-1)
        fold_ts = [r["calibration"]["temperature"] for r in results.values()]
        assert released["calibration"]["folds"] == [0, 1], released["calibration"]
        assert released["calibration"]["temperature"] == pytest.approx(statistics.median(fold_ts))
    ordered = sorted(runs[parallel].values(), key=lambda r: r.start_time)
    assert ordered[-1].name == "ravdess-release" and ordered[-1].start_time >= max(
        r.end_time for r in ordered[:-1]
    ), "the release starts after its folds"
    manifest, _, report = load_manifest_version("ravdess", early.data.tags["ser.data_fingerprint"])
    assert report["root"] == s3_root and len(manifest) == 64
    blobs = stack.state_dir / "audio-cache" / "blobs"
    assert set(manifest["sha256"]) <= {p.name for p in blobs.iterdir()}, (
        "every file staged under its manifest sha256"
    )
    for sha in manifest["sha256"][:5]:
        assert hashlib.sha256((blobs / sha).read_bytes()).hexdigest() == sha
