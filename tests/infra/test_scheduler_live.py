"""The Prefect server's scheduler does its job on the live stack: `python -m flows.deploy` is
followed by scheduled runs of `retrain-nightly` made by the server itself, the server logs no
traceback, and `infra/health` reports a scheduled deployment left without runs."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import pytest
from prefect import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

from flows.deploy import RETRAIN_DEPLOYMENT, configured_retrain_cron
from ser_infra.health import SCHEDULER_GRACE_S, scheduled_deployments_without_runs
from ser_infra.logfaults import stack_tracebacks
from ser_infra.state import log_path, log_since_start, recorded_pid

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

SCHEDULER_WAIT_S = 75
"""The issue's bound is a minute; the server's loop for recently changed deployments runs every few seconds."""


def scheduled_runs(client, deployment_id) -> list:
    runs = client.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
    )
    return [r for r in runs if r.state is not None and r.state.type.value == "SCHEDULED"]


def wait_for_scheduled_runs(client, deployment_id, timeout_s: float = SCHEDULER_WAIT_S) -> list:
    deadline = time.monotonic() + timeout_s
    runs = scheduled_runs(client, deployment_id)
    while not runs and time.monotonic() < deadline:
        time.sleep(1.0)
        runs = scheduled_runs(client, deployment_id)
    return runs


def server_tracebacks(stack) -> list[str]:
    if recorded_pid(stack.state_dir, "prefect") is None:
        pytest.skip(
            f"the Prefect server was not started by infra/up in {stack.state_dir}: its log is not here"
        )
    return stack_tracebacks("prefect", log_since_start(log_path(stack.state_dir, "prefect")), stack.db)


def test_the_server_schedules_retrain_nightly_after_deploy(stack, prefect_api, repo_root):
    env = {**os.environ, **stack.client_env()}
    with get_client(sync_client=True) as client:
        try:
            old = client.read_deployment_by_name(f"retrain/{RETRAIN_DEPLOYMENT}")
        except Exception:  # noqa: BLE001 - not deployed yet on this stack
            old = None
        if old is not None:
            for run in scheduled_runs(client, old.id):
                client.delete_flow_run(run.id)
        done = subprocess.run(
            [sys.executable, "-m", "flows.deploy"],
            cwd=repo_root,
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        deployment = client.read_deployment_by_name(f"retrain/{RETRAIN_DEPLOYMENT}")
        runs = wait_for_scheduled_runs(client, deployment.id)
    assert runs, (
        f"the server made no scheduled run of {RETRAIN_DEPLOYMENT} within {SCHEDULER_WAIT_S} s of flows.deploy"
    )
    assert all(r.auto_scheduled for r in runs), "runs of a cron schedule are made by the server's scheduler"
    minute, hour = (int(f) for f in configured_retrain_cron().split()[:2])  # infra/test's, or 03:00
    assert all((r.expected_start_time.hour, r.expected_start_time.minute) == (hour, minute) for r in runs), (
        runs
    )
    assert server_tracebacks(stack) == []


def test_health_reports_a_schedule_left_without_runs(stack, prefect_api, repo_root):
    """A throwaway hourly deployment on a pool with no worker: the server schedules it, the check
    is satisfied; with its runs deleted (after the server's quick loop for new deployments has
    passed), the check names it."""
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.flows import Flow

    tag = uuid.uuid4().hex[:10]
    pool, name = f"ser-test-idle-{tag}", f"schedule-probe-{tag}"
    probe = Flow.from_source(source=str(repo_root), entrypoint="flows/retrain.py:retrain").to_deployment(
        name=name, cron="0 * * * *"
    )
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
        deployment_id = None
        try:
            deployment_id = probe.apply(work_pool_name=pool)
            created = time.monotonic()
            assert wait_for_scheduled_runs(client, deployment_id), (
                "the server did not schedule the probe deployment"
            )
            later = time.time() + SCHEDULER_GRACE_S + 1
            assert name not in scheduled_deployments_without_runs(stack, now=later)
            time.sleep(max(0.0, 15.0 - (time.monotonic() - created)))
            for run in scheduled_runs(client, deployment_id):
                client.delete_flow_run(run.id)
            assert name in scheduled_deployments_without_runs(stack, now=later)
        finally:
            if deployment_id is not None:
                for run in client.read_flow_runs(
                    deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
                ):
                    client.delete_flow_run(run.id)
                client.delete_deployment(deployment_id)
            client.delete_work_pool(pool)
