"""`down` stops exactly the process groups `up` recorded, and nothing else."""

from __future__ import annotations

import json
import subprocess
import sys

import psutil
import pytest

from ser_infra.health import health
from ser_infra.lifecycle import down
from ser_infra.state import recorded_names, recorded_pid, start_process
from ser_stack.settings import StackSettings

SLEEPER = [
    sys.executable,
    "-c",
    "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)']); time.sleep(300)",
]


def group_members(leader_pid: int) -> list[psutil.Process]:
    leader = psutil.Process(leader_pid)
    return [leader, *leader.children(recursive=True)]


def wait_for_child(leader_pid: int) -> list[psutil.Process]:
    for _ in range(200):
        members = group_members(leader_pid)
        if len(members) == 2:
            return members
        psutil.wait_procs([], timeout=0.05)
    raise AssertionError(f"pid {leader_pid} did not start its child")


@pytest.fixture
def bystander():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    yield proc
    proc.kill()
    proc.wait()


def test_down_stops_recorded_groups_and_spares_others(tmp_path, bystander):
    settings = StackSettings.from_env({"SER_STATE_DIR": str(tmp_path)})
    leaders = [start_process(tmp_path, name, SLEEPER, {}, tmp_path) for name in ("mlflow", "prefect")]
    members = [member for leader in leaders for member in wait_for_child(leader)]
    assert {recorded_pid(tmp_path, n) for n in ("mlflow", "prefect")} == set(leaders)

    stopped = down(settings, purge=False)

    assert sorted(stopped) == ["mlflow", "prefect"]
    assert not [m.pid for m in members if m.is_running() and m.status() != psutil.STATUS_ZOMBIE]
    assert bystander.poll() is None, "a process down did not start was stopped"
    assert recorded_names(tmp_path) == []
    assert tmp_path.exists()


def test_a_reused_pid_is_not_ours(tmp_path, bystander):
    """A pid file whose pid now belongs to another process (other start time) is treated as stale."""
    (tmp_path / "pids").mkdir()
    record = {
        "pid": bystander.pid,
        "create_time": psutil.Process(bystander.pid).create_time() - 100,
        "argv": [],
    }
    (tmp_path / "pids" / "s3.json").write_text(json.dumps(record))
    assert recorded_pid(tmp_path, "s3") is None

    stopped = down(StackSettings.from_env({"SER_STATE_DIR": str(tmp_path)}), purge=False)

    assert stopped == [] and bystander.poll() is None
    assert not (tmp_path / "pids" / "s3.json").exists()


def test_down_purge_deletes_the_state_folder(tmp_path):
    state = tmp_path / "state"
    start_process(state, "s3", SLEEPER, {}, tmp_path)
    down(StackSettings.from_env({"SER_STATE_DIR": str(state)}), purge=True)
    assert not state.exists()


@pytest.mark.parametrize("db", ["sqlite", "postgres"])
def test_health_reports_every_component_down_without_a_stack(tmp_path, db):
    env = {"SER_STATE_DIR": str(tmp_path), "SER_DB": db, "SER_PG_PORT": "1", "SER_PG_PASSWORD": "x"}
    table = health(StackSettings.from_env(env))
    servers = {"s3", "mlflow", "prefect", "worker", *({"postgres"} if db == "postgres" else set())}
    assert set(table) == servers | {"scheduler", "trainings", "database"}
    assert all(table[name] and "infra/up" in table[name] for name in servers)
    assert table["scheduler"] == table["trainings"] == "Prefect server down"
    if db == "postgres":
        assert "PostgreSQL at 127.0.0.1:1" in table["database"]
    else:
        assert table["database"] is None, "SQLite has no server to be down"
