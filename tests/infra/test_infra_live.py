"""The live local stack: every service answers, listens on 127.0.0.1 only, and `up` is idempotent."""

from __future__ import annotations

import json
import os
import subprocess
import uuid

import psutil
import pytest

from ser_infra.health import check_trainings
from ser_infra.mlflow_server import check_mlflow
from ser_infra.prefect_server import WORKER_NAME, check_prefect, pool_workers
from ser_infra.seaweedfs import check_s3, s3_client, seaweed_volume_servers
from ser_infra.state import recorded_pid

pytestmark = pytest.mark.integration


def test_s3_round_trip(stack):
    client = s3_client(stack)
    key = f"tests/infra/{uuid.uuid4().hex}.bin"
    payload = os.urandom(4096)
    client.put_object(Bucket=stack.data_bucket, Key=key, Body=payload)
    try:
        assert client.get_object(Bucket=stack.data_bucket, Key=key)["Body"].read() == payload
    finally:
        client.delete_object(Bucket=stack.data_bucket, Key=key)
    names = {bucket["Name"] for bucket in client.list_buckets()["Buckets"]}
    assert {stack.data_bucket, stack.mlflow_bucket} <= names


def test_s3_refuses_anonymous_requests(stack):
    import urllib.error
    import urllib.request

    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(f"{stack.s3_endpoint}/{stack.data_bucket}/", timeout=5)
    assert error.value.code == 403


def test_servers_answer_their_health_checks(stack):
    assert check_s3(stack) is None
    # the S3 check waits for this: reads fail with InternalError until the volume server is registered
    assert seaweed_volume_servers(stack) == [f"{stack.host}:{stack.weed_volume_port}"]
    assert check_mlflow(stack) is None
    assert check_prefect(stack) is None
    workers = pool_workers(stack)
    assert any(w.name == WORKER_NAME and w.status == "ONLINE" for w in workers), workers


def local_pids(stack) -> dict[str, int]:
    pids = {
        name: recorded_pid(stack.state_dir, name)
        for name in ("s3", "mlflow", "prefect", "worker", *(["postgres"] if stack.db == "postgres" else []))
    }
    missing = [name for name, pid in pids.items() if pid is None]
    if missing:
        pytest.skip(
            f"stack at {stack.state_dir} was not started by infra/up here (no live pid for {missing})"
        )
    return pids


def test_every_server_listens_on_loopback_only(stack):
    listening: dict[str, set[tuple[str, int]]] = {}
    for name, pid in local_pids(stack).items():
        leader = psutil.Process(pid)
        listening[name] = {
            (conn.laddr.ip, conn.laddr.port)
            for proc in [leader, *leader.children(recursive=True)]
            for conn in proc.net_connections(kind="inet")
            if conn.status == psutil.CONN_LISTEN
        }
    exposed = {name: sorted(a for a in addrs if a[0] != "127.0.0.1") for name, addrs in listening.items()}
    assert not any(exposed.values()), f"listening beyond 127.0.0.1: {exposed}"
    assert ("127.0.0.1", stack.s3_port) in listening["s3"]
    assert ("127.0.0.1", stack.mlflow_port) in listening["mlflow"]
    assert ("127.0.0.1", stack.prefect_port) in listening["prefect"]
    if stack.db == "postgres":
        assert listening["postgres"] == {("127.0.0.1", stack.pg_port)}, (
            "TCP on the stack's host only, no socket"
        )


def test_up_again_starts_nothing(stack, repo_root):
    before = local_pids(stack)
    records = {p.name: json.loads(p.read_text()) for p in (stack.state_dir / "pids").glob("*.json")}
    again = subprocess.run(
        [str(repo_root / "infra" / "up")],
        env={**os.environ, **stack.client_env()},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert "started: nothing" in again.stdout
    assert local_pids(stack) == before
    assert {p.name: json.loads(p.read_text()) for p in (stack.state_dir / "pids").glob("*.json")} == records


def test_health_command_agrees(stack, repo_root):
    shown = subprocess.run(
        [str(repo_root / "infra" / "health")],
        env={**os.environ, **stack.client_env()},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert [line.split()[:2] for line in shown.stdout.splitlines()] == [
        *([["postgres", "ok"]] if stack.db == "postgres" else []),
        ["s3", "ok"],
        ["mlflow", "ok"],
        ["prefect", "ok"],
        ["worker", "ok"],
        ["scheduler", "ok"],
        ["trainings", "ok"],
        ["database", "ok"],
    ]
    database = shown.stdout.splitlines()[-1]
    assert ("PostgreSQL" if stack.db == "postgres" else "SQLite") in database, database


def test_health_reports_a_training_slot_held_by_no_training(stack):
    """A train-<corpus> slot held while no train flow run runs (a training that died holding it)
    fails the `trainings` line, naming the limit; freeing it makes the line healthy again."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
    from prefect.settings import PREFECT_API_URL, temporary_settings

    name = f"train-health{uuid.uuid4().hex[:8]}"
    with (
        temporary_settings(updates={PREFECT_API_URL: stack.prefect_api_url}),
        get_client(sync_client=True) as client,
    ):
        assert check_trainings(stack) is None
        client.create_global_concurrency_limit(
            GlobalConcurrencyLimitCreate(name=name, limit=1, active_slots=1)
        )
        try:
            reason = check_trainings(stack)
            assert (
                reason is not None
                and f"{name} (1/1)" in reason
                and "prefect gcl update NAME --active-slots 0" in reason
            )
            client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(active_slots=0))
            assert check_trainings(stack) is None
        finally:
            client.delete_global_concurrency_limit_by_name(name)


def test_processes_opening_one_new_study_at_once_share_it(stack, tmp_path):
    """Four processes open one new study in the stack's tuning storage at the same instant: all get
    the same study, and on PostgreSQL the database logs no failed INSERT of a second study of that
    name (Optuna absorbs the duplicate, but the server writes an ERROR line for it)."""
    from tests.fixtures.studies import open_at_once

    name = f"together-{uuid.uuid4().hex[:8]}"
    pg_log = stack.state_dir / "logs" / "postgres.log"
    offset = pg_log.stat().st_size if pg_log.exists() else 0
    results = open_at_once(stack.tune_storage, name, tmp_path / "go")
    assert all("study_id" in result for result in results), results
    assert len({result["study_id"] for result in results}) == 1, results
    if stack.db == "postgres":
        with open(pg_log, "rb") as handle:
            handle.seek(offset)
            added = handle.read().decode(errors="replace")
        assert not [line for line in added.splitlines() if " ERROR: " in line], added[-2000:]
