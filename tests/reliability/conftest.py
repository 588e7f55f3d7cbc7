"""Fixtures of the reliability tests: an MLflow server and a Prefect server of the test's own that
it may kill, two torch threads, and the live-stack fixtures of tests/flows (a private data bucket,
the Prefect API).

A private server is the stack's own component (infra/ser_infra builds its command line and
environment, starts it in its own process group and records its pid in a temporary state folder)
on a free port: MLflow with its artifacts in a bucket of its own on the live S3, Prefect with its
own PREFECT_HOME (database, concurrency leases). The shared stack's servers are never touched.
"""

from __future__ import annotations

import os
import signal
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from flows.storage import DataBucket
from ser_infra.component import launch, wait_healthy
from ser_infra.environment import stack_env
from ser_infra.lifecycle import components
from ser_infra.state import recorded_pid, stop_recorded
from ser_stack.settings import StackSettings
from tests.fixtures.network import free_port
from tests.fixtures.torch_threads import two_torch_threads  # noqa: F401 - autouse fixture
from tests.flows.live_stack import empty_bucket

START_TIMEOUT_S = 180.0


@dataclass
class PrivateServer:
    """A stack server (component ``name`` of ser_infra.lifecycle.components) this test owns:
    `crash()` SIGKILLs its process group (found through the pid file in its state folder),
    `start()` launches it again as `infra/up` does."""

    settings: StackSettings
    name: str = "mlflow"

    @property
    def tracking_uri(self) -> str:
        return self.settings.tracking_uri

    @property
    def state_dir(self) -> Path:
        return self.settings.state_dir

    def component(self):
        (component,) = [c for c in components(self.settings) if c.name == self.name]
        return component

    def start(self) -> None:
        component = self.component()
        launch(self.settings, component, stack_env(self.settings))
        wait_healthy(self.settings, component, START_TIMEOUT_S)

    def crash(self) -> int:
        """SIGKILL the server's whole process group (no clean shutdown); returns the leader's pid."""
        import psutil

        pid = recorded_pid(self.state_dir, self.name)
        assert pid is not None, f"no live {self.name} process recorded in {self.state_dir / 'pids'}"
        members = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
        os.killpg(pid, signal.SIGKILL)
        psutil.wait_procs(members, timeout=30)
        assert recorded_pid(self.state_dir, self.name) is None
        return pid

    def stop(self) -> None:
        stop_recorded(self.state_dir, [self.name])


@pytest.fixture
def private_mlflow(stack, tmp_path_factory) -> PrivateServer:
    """A running MLflow server of this test's own (see the module docstring); stopped and its
    bucket emptied and deleted afterwards."""
    state_dir = tmp_path_factory.mktemp("mlflow-state")
    bucket = f"ser-rel-{uuid.uuid4().hex[:12]}"
    env = {
        key: value
        for key, value in stack.client_env().items()
        if key not in ("MLFLOW_TRACKING_URI", "PREFECT_HOME")
    }
    env.update(
        {
            "SER_STATE_DIR": str(state_dir),
            "SER_MLFLOW_PORT": str(free_port(stack.host)),
            "SER_MLFLOW_BUCKET": bucket,
            # its own database too: with SER_DB=postgres it would share the suite's PostgreSQL database
            "SER_DB": "sqlite",
        }
    )
    settings = StackSettings.from_env(env)
    client = DataBucket.from_settings(stack).client
    client.create_bucket(Bucket=bucket)
    server = PrivateServer(settings, "mlflow")
    try:
        server.start()
        yield server
    finally:
        server.stop()
        empty_bucket(DataBucket(client=client, name=bucket))


@pytest.fixture
def private_prefect(stack, tmp_path_factory) -> PrivateServer:
    """A running Prefect server of this test's own (its own PREFECT_HOME and port); stopped afterwards."""
    state_dir = tmp_path_factory.mktemp("prefect-state")
    env = {
        key: value
        for key, value in stack.client_env().items()
        if key not in ("PREFECT_API_URL", "PREFECT_HOME")
    }
    # SER_DB=sqlite: its own database in its state folder, not the suite's PostgreSQL one
    env.update(
        {"SER_STATE_DIR": str(state_dir), "SER_PREFECT_PORT": str(free_port(stack.host)), "SER_DB": "sqlite"}
    )
    server = PrivateServer(StackSettings.from_env(env), "prefect")
    try:
        server.start()
        yield server
    finally:
        server.stop()
