"""Start, check and stop the local SER stack, all bound to SER_HOST (127.0.0.1 by default).

Components, in start order:
  s3       SeaweedFS `weed mini` (S3 API with access-key auth), buckets created with boto3
  mlflow   MLflow tracking server (SQLite backend, artifacts proxied to s3://<mlflow bucket>/artifacts)
  prefect  Prefect server (SQLite under PREFECT_HOME)
  worker   one Prefect process worker polling the work pool (created if missing)

`health` also checks the Prefect server's scheduler, which can fail while the server answers:
every deployment with an active schedule must have scheduled runs, and the server's log must
hold no traceback since it started.

Every process is started in its own session (process group); its pid and start time go to
`<state>/pids/<name>.json`, its output to `<state>/logs/<name>.log`. `down` signals exactly
those process groups, so it never touches a process this script did not start.

Usage (through the bash wrappers in infra/):
  python infra/stack.py up | down [--purge] | health | env
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import TYPE_CHECKING

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from ser_stack.processes import (  # noqa: E402
    STOP_GRACE_S,
    NotReadyError,
    http_check,
    start_process_group,
    stop_process_group,
    wait_ready,
)
from ser_stack.settings import CREDENTIALS_FILE, StackSettings  # noqa: E402

if TYPE_CHECKING:
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.filters import FlowRunFilter
    from prefect.client.schemas.objects import Worker

log = logging.getLogger("ser.infra")

BIN = Path(sys.executable).parent
TELEMETRY_OFF = {
    "DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}
WORKER_NAME = "ser-worker"
HTTP_TIMEOUT_S = 3.0
API_PAGE = 200
"""Objects one Prefect API read returns at most (the server's default page limit)."""
SCHEDULER_GRACE_S = 90.0
"""A deployment whose schedule changed less than this long ago may not have its runs yet (the
server's scheduler visits recently changed deployments every few seconds, all others every minute)."""
START_HEADER = "\n=== "
"""Written by `start_process` before each start of a process into its log."""
PREFECT_TOML = REPO_ROOT / "prefect.toml"


class StackError(RuntimeError):
    """A component failed to start or answer; the message says which and shows its log tail."""


# ----------------------------------------------------------------------------- credentials


def ensure_credentials(settings: StackSettings) -> StackSettings:
    """Return settings with S3 credentials: from the environment, else generated once into the state folder (0600)."""
    if settings.access_key_id and settings.secret_access_key:
        return settings
    path = settings.state_dir / CREDENTIALS_FILE
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    stored = {
        "access_key_id": "SER" + secrets.token_hex(8).upper(),
        "secret_access_key": secrets.token_urlsafe(30),
    }
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(stored, handle)
    log.info("generated S3 credentials in %s", path)
    return StackSettings.from_env({**os.environ, **settings.client_env()})


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path` readable by the owner only (0600), replacing any previous file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


def seaweed_s3_config(settings: StackSettings) -> str:
    """SeaweedFS S3 identity file: one identity with full rights for the stack's access key."""
    identity = {
        "name": "ser",
        "credentials": [{"accessKey": settings.access_key_id, "secretKey": settings.secret_access_key}],
        "actions": ["Admin", "Read", "List", "Tagging", "Write"],
    }
    return json.dumps({"identities": [identity]}, indent=2)


# ----------------------------------------------------------------------------- pid bookkeeping


def pid_dir(state_dir: Path) -> Path:
    return state_dir / "pids"


def log_path(state_dir: Path, name: str) -> Path:
    return state_dir / "logs" / f"{name}.log"


def process_start_time(pid: int) -> float | None:
    """Start time of `pid` (seconds since the epoch) from psutil, or None if no such process."""
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None


def start_process(state_dir: Path, name: str, argv: list[str], env: Mapping[str, str], cwd: Path) -> int:
    """Start `argv` as the leader of a new process group, output to its log; record pid + start time."""
    pid_dir(state_dir).mkdir(parents=True, exist_ok=True)
    header = f"{START_HEADER}{time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(argv)}\n"
    proc = start_process_group(argv, env, log_path(state_dir, name), cwd, header)
    record = {"pid": proc.pid, "create_time": process_start_time(proc.pid), "argv": argv}
    (pid_dir(state_dir) / f"{name}.json").write_text(json.dumps(record))
    return proc.pid


def recorded_pid(state_dir: Path, name: str) -> int | None:
    """The pid recorded for `name` if that very process (same start time) is still alive, else None."""
    import psutil

    path = pid_dir(state_dir) / f"{name}.json"
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    try:
        proc = psutil.Process(record["pid"])
        same = record["create_time"] is not None and abs(proc.create_time() - record["create_time"]) <= 1.0
        alive = proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return None
    return record["pid"] if same and alive else None


def recorded_names(state_dir: Path) -> list[str]:
    return sorted(path.stem for path in pid_dir(state_dir).glob("*.json"))


def stop_recorded(state_dir: Path, names: list[str], grace_s: float = STOP_GRACE_S) -> list[str]:
    """Stop the recorded process groups of `names` (in the given order), remove their pid files.

    Returns the names that were actually running.
    """
    stopped = []
    for name in names:
        pid = recorded_pid(state_dir, name)
        if pid is not None:
            began = time.monotonic()
            stop_process_group(pid, grace_s, log.warning)
            log.info("stopped %s (pid %d) in %.1f s", name, pid, time.monotonic() - began)
            stopped.append(name)
        (pid_dir(state_dir) / f"{name}.json").unlink(missing_ok=True)
    return stopped


# ----------------------------------------------------------------------------- health checks


@contextlib.contextmanager
def prefect_api(settings: StackSettings) -> Iterator[SyncPrefectClient]:
    """The stack's Prefect server through the Prefect client, as the flows talk to it, with short
    timeouts and none of the client's retries: a health check must answer fast."""
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.settings import PREFECT_CLIENT_MAX_RETRIES, temporary_settings

    client = SyncPrefectClient(settings.prefect_api_url, httpx_settings={"timeout": HTTP_TIMEOUT_S})
    with temporary_settings({PREFECT_CLIENT_MAX_RETRIES: 0}), client:
        yield client


def s3_client(settings: StackSettings):
    """The stack's S3 client with short timeouts and no retries: health checks must answer fast."""
    return settings.s3_client(connect_timeout_s=HTTP_TIMEOUT_S, read_timeout_s=10, max_attempts=1)


def check_s3(settings: StackSettings) -> str | None:
    """None when the S3 API lists buckets with the stack's credentials, else the reason."""
    try:
        s3_client(settings).list_buckets()
    except Exception as exc:  # noqa: BLE001 - any failure is "unhealthy", reported with its reason
        return f"S3 list_buckets at {settings.s3_endpoint}: {exc}"
    return None


def check_mlflow(settings: StackSettings) -> str | None:
    return http_check(f"{settings.tracking_uri}/health", HTTP_TIMEOUT_S)


def check_prefect(settings: StackSettings) -> str | None:
    return http_check(f"{settings.prefect_api_url}/health", HTTP_TIMEOUT_S)


def pool_workers(settings: StackSettings) -> list[Worker]:
    """Workers registered in the work pool, as the Prefect API reports them."""
    with prefect_api(settings) as client:
        return client.read_workers_for_work_pool(settings.work_pool)


def check_worker(settings: StackSettings) -> str | None:
    """None when the stack's worker is registered ONLINE in the work pool, else the reason."""
    try:
        workers = pool_workers(settings)
    except Exception as exc:  # any failure is "unhealthy", reported with its reason
        return f"work pool {settings.work_pool!r}: {exc}"
    online = [w for w in workers if w.name == WORKER_NAME and w.status == "ONLINE"]
    if not online:
        return f"no ONLINE worker named {WORKER_NAME!r} in work pool {settings.work_pool!r} (found {[w.name for w in workers]})"
    return None


def log_since_start(path: Path) -> str:
    """What the process logged into `path` since its latest start (the text after the last start header)."""
    if not path.exists():
        return ""
    text = path.read_text(errors="replace")
    return text[text.rfind(START_HEADER) + 1 :] if START_HEADER in text else text


def tracebacks(text: str, skip_origin: re.Pattern[str] | None = None) -> list[str]:
    """The closing line of each Python traceback in `text` (``ValueError: ...``), in order.

    A traceback starts at a ``Traceback (most recent call last):`` line; its frames are indented;
    the first unindented line after them names the exception. With `skip_origin`, a traceback
    whose preceding line (the log record that printed it) matches is left out."""
    found = []
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if "Traceback (most recent call last):" not in line:
            continue
        if skip_origin is not None and index > 0 and skip_origin.search(lines[index - 1]):
            continue
        for after in lines[index + 1 :]:
            if after.strip() and not after.startswith((" ", "\t")):
                found.append(after.strip())
                break
        else:
            found.append("(traceback cut short)")
    return found


RUN_FAILURE = re.compile(r"\| (?:Flow|Task) run '")
"""How the worker's log heads the failure of a flow or task run it executes: the run's own error
(bad data, a test failing a run on purpose), recorded as the run's state in Prefect."""


SQLITE_BUSY = "database is locked"
"""What Prefect's server on SQLite logs when several runs write at once (fold flow runs at a
``folds`` queue concurrency above 1): the request is answered with an error and the client retries
it (PrefectHQ/prefect#10188, #17473). A load limit of SQLite, not a fault; PostgreSQL has none."""


def stack_tracebacks(name: str, text: str) -> list[str]:
    """Tracebacks in the log of component `name` that show a fault of the stack itself: every
    one in a server's log but the Prefect server's SQLite lock waits (:data:`SQLITE_BUSY`); in
    the worker's, those not printed for a failing flow or task run."""
    found = tracebacks(text, RUN_FAILURE if name == "worker" else None)
    return [line for line in found if SQLITE_BUSY not in line] if name == "prefect" else found


def next_run_due(schedule: dict, now: float, horizon_s: float) -> bool:
    """True when `schedule` (a deployment schedule as the Prefect API returns it) fires within
    `horizon_s` seconds of `now`: only then must the server's scheduler have made a run for it."""
    import asyncio
    from datetime import datetime, timedelta

    from prefect.server.schemas.schedules import SCHEDULE_TYPES
    from pydantic import TypeAdapter

    start = datetime.fromtimestamp(now, UTC)
    parsed = TypeAdapter(SCHEDULE_TYPES).validate_python(schedule)
    return bool(asyncio.run(parsed.get_dates(n=1, start=start, end=start + timedelta(seconds=horizon_s))))


def scheduled_deployments_without_runs(settings: StackSettings, now: float | None = None) -> list[str]:
    """Names of the deployments the server's scheduler should have made runs for and did not:
    not paused, an active schedule unchanged for SCHEDULER_GRACE_S that fires within the
    scheduler's horizon (Prefect's ``server.services.scheduler.max_scheduled_time``), and no
    flow run in state SCHEDULED."""
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.settings import get_current_settings

    now = time.time() if now is None else now
    horizon_s = get_current_settings().server.services.scheduler.max_scheduled_time.total_seconds()
    missing = []
    with prefect_api(settings) as client:
        for deployment in client.read_deployments():
            active = [s for s in deployment.schedules if s.active]
            if not active or deployment.paused:
                continue
            changed = max(x.updated.timestamp() for x in [deployment, *active])
            if now - changed < SCHEDULER_GRACE_S or not any(
                next_run_due(s.schedule.model_dump(mode="json"), now, horizon_s) for s in active
            ):
                continue
            of_deployment = DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id]))
            if (
                client.count_flow_runs(deployment_filter=of_deployment, flow_run_filter=runs_in("SCHEDULED"))
                == 0
            ):
                missing.append(deployment.name)
    return missing


def runs_in(state_type: str) -> FlowRunFilter:
    """The flow-run filter of one state type (``SCHEDULED``, ``RUNNING``, …)."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType

    return FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[state_type])))


def check_scheduler(settings: StackSettings, local: bool = True) -> str | None:
    """None when the Prefect server schedules runs, else the reason.

    Fails when a scheduled deployment has no scheduled run (see
    `scheduled_deployments_without_runs`), and, for a local stack (`local`), when the server's
    log holds a traceback of a fault since its latest start (`stack_tracebacks`: SQLite lock
    waits, which clients retry, are not faults)."""
    if local:
        logfile = log_path(settings.state_dir, "prefect")
        found = stack_tracebacks("prefect", log_since_start(logfile))
        if found:
            return f"{len(found)} traceback(s) in {logfile} since the server started, the last: {found[-1]}"
    try:
        missing = scheduled_deployments_without_runs(settings)
    except Exception as exc:  # any failure is "unhealthy", reported with its reason
        return f"deployments of {settings.prefect_api_url}: {exc}"
    if missing:
        return (
            f"deployment(s) {', '.join(sorted(missing))} have an active schedule but no scheduled run: "
            "the Prefect server's scheduler is not creating runs (see the prefect log)"
        )
    return None


def orphaned_training_slots(settings: StackSettings) -> list[str]:
    """``name (held/limit)`` of the ``train-<corpus>`` limits (flows/limits.py) whose slots held
    outnumber the ``train`` flow runs running: a training that died holding its slot. Its lease
    frees it within flows.limits.LEASE_S; one held longer blocks every later training of the corpus."""
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    with prefect_api(settings) as client:
        limits = client.read_global_concurrency_limits(limit=API_PAGE)
        held = [limit for limit in limits if limit.name.startswith("train-") and limit.active_slots > 0]
        if not held:
            return []
        train = FlowFilter(name=FlowFilterName(any_=["train"]))
        running = client.count_flow_runs(flow_filter=train, flow_run_filter=runs_in("RUNNING"))
    if sum(limit.active_slots for limit in held) <= running:
        return []
    return [
        f"{limit.name} ({limit.active_slots}/{limit.limit})" for limit in sorted(held, key=lambda x: x.name)
    ]


def check_trainings(settings: StackSettings) -> str | None:
    """None unless a training slot is held with no training running (`orphaned_training_slots`)."""
    try:
        orphans = orphaned_training_slots(settings)
    except Exception as exc:  # any failure is "unhealthy", reported with its reason
        return f"concurrency limits of {settings.prefect_api_url}: {exc}"
    if orphans:
        return (
            f"training slot(s) held with no train flow run running: {', '.join(orphans)}; later trainings of "
            "the corpus wait. A dead training's lease frees its slot within 5 minutes; if it stays, free it "
            "with: prefect gcl update NAME --active-slots 0"
        )
    return None


# ----------------------------------------------------------------------------- components


@dataclass(frozen=True)
class Component:
    """One long-running process of the stack: how to start it and how to know it is healthy."""

    name: str
    port: int | None
    argv: list[str]
    check: Callable[[StackSettings], str | None]
    url: str


def components(settings: StackSettings) -> list[Component]:
    state = settings.state_dir
    weed = [
        str(BIN / "weed"),
        "mini",
        f"-dir={state / 'seaweedfs'}",
        f"-ip={settings.host}",
        f"-ip.bind={settings.host}",
        f"-master.port={settings.weed_master_port}",
        f"-volume.port={settings.weed_volume_port}",
        f"-filer.port={settings.weed_filer_port}",
        f"-s3.port={settings.s3_port}",
        f"-admin.port={settings.weed_admin_port}",
        f"-s3.config={state / 'seaweedfs-s3.json'}",
        "-master.telemetry=false",
        "-admin.ui=false",
        "-webdav=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
    ]
    mlflow = [
        str(BIN / "mlflow"),
        "server",
        "--host",
        settings.host,
        "--port",
        str(settings.mlflow_port),
        "--backend-store-uri",
        f"sqlite:///{state / 'mlflow.db'}",
        "--artifacts-destination",
        f"s3://{settings.mlflow_bucket}/artifacts",
        "--serve-artifacts",
        "--workers",
        "2",
    ]
    prefect = [
        str(BIN / "prefect"),
        "server",
        "start",
        "--host",
        settings.host,
        "--port",
        str(settings.prefect_port),
        "--analytics-off",
        "--no-background",
    ]
    worker = [
        str(BIN / "prefect"),
        "worker",
        "start",
        "--pool",
        settings.work_pool,
        "--type",
        "process",
        "--name",
        WORKER_NAME,
        "--install-policy",
        "never",
    ]
    return [
        Component("s3", settings.s3_port, weed, check_s3, settings.s3_endpoint),
        Component("mlflow", settings.mlflow_port, mlflow, check_mlflow, settings.tracking_uri),
        Component(
            "prefect",
            settings.prefect_port,
            prefect,
            check_prefect,
            settings.prefect_api_url.removesuffix("/api"),
        ),
        Component("worker", None, worker, check_worker, f"work pool {settings.work_pool}"),
    ]


def stack_env(settings: StackSettings) -> dict[str, str]:
    """Environment for every stack process: the caller's, plus the client settings, telemetry off."""
    return {
        # SQLite waits this long for a lock before failing a request (Prefect's default: 10 s,
        # too short when training and tests load a small machine)
        "PREFECT_SERVER_DATABASE_TIMEOUT": "60",
        # concurrency-slot leases on disk under PREFECT_HOME, not in the server's memory: a slot held
        # by a training that died while the server restarted (infra/down, a crash) is released when
        # its lease expires, instead of staying taken for ever (Prefect's default storage forgets the
        # lease on restart but keeps the slot counted: PrefectHQ/prefect#17415, #20090)
        "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "prefect.server.concurrency.lease_storage.filesystem",
        # how every MLflow request of the flows rides out an outage of the tracking server (no retry
        # loop of our own on top): 7 retries, waits of 0, 4, 8, … 120 s (urllib3's backoff), about
        # 4 minutes in all; then the task fails and Prefect's task retries or a rerun resume
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "7",
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "2",
        **os.environ,
        **settings.client_env(),
        **TELEMETRY_OFF,
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        # The project's Prefect plugin (short deployment names) is for people's shells (infra/env.sh),
        # not for the stack: the servers, the worker and the flow runs it starts only use full names.
        # Left on (prefect.toml turns it on in the project folder, where the stack runs), Prefect's
        # subprocess that runs a crashed flow run's hooks (prefect/runner/_workspace_runtime_bootstrap.py)
        # first imports prefect inside its event loop, where plugin start-up cannot run, and logs
        # "Failed to initialize plugins: Already running asyncio in this thread" for every crash.
        "PREFECT_PLUGINS_ENABLED": "false",
    }


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((host, port)) == 0


def tail(path: Path, lines: int = 30) -> str:
    if not path.exists():
        return f"(no log at {path})"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def wait_healthy(settings: StackSettings, component: Component, timeout_s: float) -> None:
    """Poll the component's health check until it passes; raise StackError with the log tail otherwise."""
    logfile = log_path(settings.state_dir, component.name)

    def exited() -> str | None:
        alive = recorded_pid(settings.state_dir, component.name) is not None
        return None if alive else "exited during start-up"

    try:
        wait_ready(lambda: component.check(settings), exited, timeout_s)
    except NotReadyError as err:
        raise StackError(f"{component.name} {err}; last lines of {logfile}:\n{tail(logfile)}") from None


def create_buckets(settings: StackSettings) -> None:
    client = s3_client(settings)
    existing = {bucket["Name"] for bucket in client.list_buckets().get("Buckets", [])}
    for bucket in (settings.data_bucket, settings.mlflow_bucket):
        if bucket not in existing:
            client.create_bucket(Bucket=bucket)
            log.info("created bucket s3://%s", bucket)


def ensure_work_pool(settings: StackSettings, env: Mapping[str, str]) -> None:
    """Create the stack's process work pool unless it exists (``prefect work-pool create``, which
    fills in the process worker's default job template)."""
    from prefect.exceptions import ObjectNotFound

    with prefect_api(settings) as client:
        try:
            client.read_work_pool(settings.work_pool)
            return
        except ObjectNotFound:
            pass
    subprocess.run(
        [str(BIN / "prefect"), "work-pool", "create", "--type", "process", settings.work_pool],
        cwd=REPO_ROOT,
        env=dict(env),
        check=True,
        capture_output=True,
        timeout=120,
    )
    log.info("created work pool %s", settings.work_pool)


def launch(settings: StackSettings, component: Component, env: Mapping[str, str]) -> bool:
    """Start `component` unless our recorded process is already running; True when started now."""
    if recorded_pid(settings.state_dir, component.name) is not None:
        return False
    if component.port is not None and port_in_use(settings.host, component.port):
        raise StackError(
            f"{component.name}: port {settings.host}:{component.port} is already taken by a process this stack "
            f"did not start; stop it or choose another port (SER_*_PORT, see infra/README.md)"
        )
    start_process(settings.state_dir, component.name, component.argv, env, REPO_ROOT)
    return True


def up(settings: StackSettings, timeout_s: float) -> list[str]:
    """Start every component not already running and wait until all are healthy. Returns those started."""
    settings = ensure_credentials(settings)
    write_private(settings.state_dir / "seaweedfs-s3.json", seaweed_s3_config(settings))
    (settings.state_dir / "seaweedfs").mkdir(parents=True, exist_ok=True)
    settings.prefect_home.mkdir(parents=True, exist_ok=True)
    env = stack_env(settings)
    s3, mlflow, prefect, worker = components(settings)
    started = []
    if launch(settings, s3, env):
        started.append(s3.name)
    wait_healthy(settings, s3, timeout_s)
    create_buckets(settings)
    for component in (mlflow, prefect):
        if launch(settings, component, env):
            started.append(component.name)
    for component in (mlflow, prefect):
        wait_healthy(settings, component, timeout_s)
    ensure_work_pool(settings, env)
    if launch(settings, worker, env):
        started.append(worker.name)
    wait_healthy(settings, worker, timeout_s)
    return started


def down(settings: StackSettings, purge: bool) -> list[str]:
    """Stop what `up` started (worker first, S3 last); with `purge`, also delete the state folder."""
    order = ["worker", "prefect", "mlflow", "s3"]
    names = [n for n in order if n in recorded_names(settings.state_dir)]
    names += [n for n in recorded_names(settings.state_dir) if n not in order]
    stopped = stop_recorded(settings.state_dir, names)
    if purge and settings.state_dir.exists():
        shutil.rmtree(settings.state_dir)
    return stopped


def health(settings: StackSettings, local: bool = True, scheduler: bool = True) -> dict[str, str | None]:
    """Reason each component is unhealthy (None when healthy), by component name, then (with
    `scheduler`) the reason the Prefect scheduler fails under the name ``scheduler`` and the
    reason trainings are blocked (`check_trainings`) under ``trainings``.

    `local` also requires the process recorded by `up` in the state folder to be alive, and reads
    the server's log; without it only the services are asked (a stack started elsewhere, e.g.
    remote servers).
    """
    result = {}
    for component in components(settings):
        if local and recorded_pid(settings.state_dir, component.name) is None:
            result[component.name] = "not running (no live process recorded; run infra/up)"
        else:
            result[component.name] = component.check(settings)
    if scheduler:
        result["scheduler"] = (
            "Prefect server down" if result["prefect"] is not None else check_scheduler(settings, local)
        )
        result["trainings"] = (
            "Prefect server down" if result["prefect"] is not None else check_trainings(settings)
        )
    return result


def plugin_env(prefect_toml: Path = PREFECT_TOML) -> dict[str, str]:
    """The ``[plugins]`` settings of the project's prefect.toml as Prefect environment variables,
    so a shell in any folder loads the project's Prefect plugin (short deployment names)."""
    plugins = tomllib.loads(prefect_toml.read_text()).get("plugins", {})
    env = {}
    if "enabled" in plugins:
        env["PREFECT_PLUGINS_ENABLED"] = str(bool(plugins["enabled"])).lower()
    if plugins.get("allow"):
        env["PREFECT_PLUGINS_ALLOW"] = ",".join(plugins["allow"])
    return env


def path_with_venv(path: str, bin_dir: Path = BIN) -> str:
    """`path` (a PATH value) with `bin_dir` first and nowhere else, so `prefect` and `ser` are the project's."""
    rest = [entry for entry in path.split(os.pathsep) if entry and Path(entry) != bin_dir]
    return os.pathsep.join([str(bin_dir), *rest])


def env_lines(settings: StackSettings, environ: Mapping[str, str] | None = None) -> list[str]:
    """``export`` lines for a shell: the client settings, telemetry off, the project's Prefect plugin
    on, and `.venv/bin` first on PATH (`environ` gives the PATH to extend; default: ours)."""
    environ = os.environ if environ is None else environ
    values = {
        **settings.client_env(),
        **TELEMETRY_OFF,
        **plugin_env(),
        "PATH": path_with_venv(environ.get("PATH", "")),
    }
    return [f"export {key}={shlex.quote(value)}" for key, value in values.items()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="infra/stack.py", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up_parser = sub.add_parser("up", help="start what is not running, wait until all is healthy")
    up_parser.add_argument("--timeout", type=float, default=float(os.environ.get("SER_UP_TIMEOUT", 180)))
    down_parser = sub.add_parser("down", help="stop exactly what up started")
    down_parser.add_argument("--purge", action="store_true", help="also delete the state folder (all data)")
    sub.add_parser("health", help="print a table; exit 0 only when every component is healthy")
    sub.add_parser("env", help="print export lines for clients")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = StackSettings.from_env()

    if args.command == "env":
        print("\n".join(env_lines(settings)))
        return 0
    if args.command == "down":
        stopped = down(settings, args.purge)
        print(
            f"stopped: {', '.join(stopped) or 'nothing was running'}"
            + (f"; deleted {settings.state_dir}" if args.purge else "")
        )
        return 0
    if args.command == "health":
        table = health(settings)
        where = {c.name: c.url for c in components(settings)}
        where["scheduler"] = f"deployments of {where['prefect']}"
        where["trainings"] = f"train-<corpus> limits of {where['prefect']}"
        for name, reason in table.items():
            print(f"{name:9} {'ok' if reason is None else 'DOWN':5} {where[name]:44} {reason or ''}")
        return 0 if all(reason is None for reason in table.values()) else 1
    try:
        started = up(settings, args.timeout)
    except (StackError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        print(
            f"infra/up failed: {exc}\n{detail.decode(errors='replace') if isinstance(detail, bytes) else detail}",
            file=sys.stderr,
        )
        return 1
    print(
        f"stack up (state: {settings.state_dir}); started: {', '.join(started) or 'nothing, all were running'}"
    )
    for component in components(settings):
        print(f"  {component.name:8} {component.url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
