"""flows.follow on the live stack: a deployment run's log lines reach the terminal as they come,
and the exit status says how the run ended."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest
from prefect import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from prefect.flows import Flow

from tests.fixtures.corpora import make_ravdess

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def follow(repo_root, stack, name: str, params: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flows.follow", name, "--params", params, "--timeout", "200"],
        cwd=repo_root,
        env={**os.environ, **stack.client_env()},
        capture_output=True,
        text=True,
        timeout=240,
    )


def test_follow_prints_the_run_log_and_exits_by_its_state(
    live_bucket, prefect_api, stack, repo_root, tmp_path
):
    root = tmp_path / "ravdess"
    make_ravdess(root, actors=range(1, 9), per_actor=1)
    name = f"follow-probe-{uuid.uuid4().hex[:8]}"
    deployment = Flow.from_source(source=str(repo_root), entrypoint="flows/ingest.py:ingest").to_deployment(
        name=name,
        parameters={"corpus": "ravdess"},
        job_variables={"env": {"SER_DATA_BUCKET": live_bucket.name}},
    )
    deployment_id = deployment.apply(work_pool_name=stack.work_pool)
    try:
        done = follow(
            repo_root, stack, f"ingest/{name}", f'{{"root": "{root}", "announce": false, "workers": 1}}'
        )
        assert done.returncode == 0, done.stdout + done.stderr
        lines = done.stdout.splitlines()
        assert lines[0].startswith("flow run ") and lines[-1] == f"ingest/{name}: Completed"
        ingesting = [i for i, line in enumerate(lines) if f"ingesting ravdess from {root}" in line]
        published = [i for i, line in enumerate(lines) if "published manifest" in line]
        assert len(ingesting) == len(published) == 1, "each log line is printed once"
        assert ingesting < published

        failed = follow(
            repo_root, stack, f"ingest/{name}", f'{{"root": "{tmp_path / "absent"}", "announce": false}}'
        )
        assert failed.returncode == 1
        assert failed.stdout.splitlines()[-1].startswith(f"ingest/{name}: Failed")
    finally:
        with get_client(sync_client=True) as client:
            for run in client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
            ):
                client.delete_flow_run(run.id)
            client.delete_deployment(deployment_id)


def test_lines_that_arrive_after_the_final_state_are_still_printed():
    """The run's last log batch can reach the server after its Completed state (seen under load:
    none of an ingest run's lines had arrived when follow saw the state); drain keeps reading until
    the log stops growing."""
    from flows.follow import DRAIN_QUIET_POLLS, drain

    class LateReader:
        def __init__(self):
            self.batches = [[], ["ingesting ravdess"], [], ["published manifest"], [], [], ["never read"]]

        def new_lines(self):
            return self.batches.pop(0) if self.batches else []

    printed, sleeps = [], []
    drain(LateReader(), printed.append, sleep=sleeps.append)
    assert printed == ["ingesting ravdess", "published manifest"], (
        "a quiet poll between batches does not end the drain"
    )
    assert len(sleeps) == 4 + DRAIN_QUIET_POLLS, "it stops after the quiet polls, before the far-late line"
