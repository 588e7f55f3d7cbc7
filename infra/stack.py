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
  python infra/stack.py up | down [--purge] | health | env | backup DIR | restore DIR
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
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
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
from ser_stack.settings import (  # noqa: E402
    CREDENTIALS_FILE,
    PG_CREDENTIALS_FILE,
    PG_USER,
    StackSettings,
)

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


# ----------------------------------------------------------------------------- PostgreSQL (SER_DB=postgres)

PG_DATABASES = ("prefect", "mlflow", "optuna")
"""The databases the stack creates on its PostgreSQL server: Prefect's, MLflow's tracking store, Optuna's studies."""
PG_OS_USER = "postgres"
"""The system user that runs the server when the stack is started as root (PostgreSQL refuses to run as root)."""
PG_MAX_CONNECTIONS = 300
"""Prefect's server (a pool of 5 + 10 per process), MLflow's workers, every flow run's Optuna storage."""


MLFLOW_WORKERS = 1
"""MLflow's server processes by default: each holds about 250 MiB, and one answered the load benchmark's
4 concurrent folds (docs/RESULTS.md §9); ``SER_MLFLOW_WORKERS`` sets more."""


def mlflow_workers() -> int:
    """Worker processes of the MLflow server: ``SER_MLFLOW_WORKERS`` (a whole number ≥ 1), else MLFLOW_WORKERS."""
    raw = os.environ.get("SER_MLFLOW_WORKERS", "").strip()
    if not raw:
        return MLFLOW_WORKERS
    if not raw.isdigit() or int(raw) < 1:
        raise SystemExit(
            f"SER_MLFLOW_WORKERS={raw!r}: expected a whole number of worker processes, 1 or more"
        )
    return int(raw)


def postgres_bin_dir() -> Path:
    """Folder of the PostgreSQL server programs: ``SER_PG_BIN``, else the newest Debian version under
    /usr/lib/postgresql, else the folder of an ``initdb`` on PATH."""
    if os.environ.get("SER_PG_BIN"):
        return Path(os.environ["SER_PG_BIN"])
    debian = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if debian:
        return debian[-1].parent
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).resolve().parent
    raise StackError(
        "SER_DB=postgres but no PostgreSQL server programs (initdb, postgres) were found in /usr/lib/postgresql/*/bin "
        "or on PATH; run infra/setup as root (it installs Debian's postgresql), install PostgreSQL yourself and set "
        "SER_PG_BIN to its bin folder, or use SER_DB=sqlite"
    )


def pg_data_dir(settings: StackSettings) -> Path:
    return settings.state_dir / "postgres"


def as_server_user(argv: list[str]) -> list[str]:
    """`argv` run as :data:`PG_OS_USER` when we are root (``setpriv``, which execs: the pid stays the
    server's), else as is."""
    if os.geteuid() != 0:
        return argv
    return ["setpriv", f"--reuid={PG_OS_USER}", f"--regid={PG_OS_USER}", "--init-groups", "--", *argv]


def server_user_ids() -> tuple[int, int] | None:
    """(uid, gid) the server runs as when we are root, None otherwise; StackError when that user is missing."""
    import pwd

    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(PG_OS_USER)
    except KeyError:
        raise StackError(
            f"SER_DB=postgres as root needs the system user {PG_OS_USER!r} to run the server (PostgreSQL refuses "
            "root); Debian's postgresql package creates it (infra/setup installs it)"
        ) from None
    return entry.pw_uid, entry.pw_gid


def ensure_pg_password(settings: StackSettings) -> StackSettings:
    """Return settings with the PostgreSQL password: from SER_PG_PASSWORD, else generated once into the
    state folder (0600)."""
    if settings.pg_password:
        return settings
    path = settings.state_dir / PG_CREDENTIALS_FILE
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump({"user": PG_USER, "password": secrets.token_urlsafe(24)}, handle)
    log.info("generated the PostgreSQL password in %s", path)
    return StackSettings.from_env({**os.environ, **settings.client_env(), "SER_TUNE_STORAGE": ""})


def init_postgres(settings: StackSettings) -> bool:
    """Create the server's data folder with ``initdb`` unless it holds a cluster: superuser
    :data:`PG_USER` with the stack's password (scram-sha-256 over TCP only). True when created now."""
    data = pg_data_dir(settings)
    if (data / "PG_VERSION").exists():
        return False
    ids = server_user_ids()
    for folder in [settings.state_dir, *settings.state_dir.parents]:
        if ids is not None and not os.stat(folder).st_mode & 0o001:
            raise StackError(
                f"SER_DB=postgres: the server runs as {PG_OS_USER!r}, which cannot enter {folder} (no search "
                "permission for others); choose a SER_STATE_DIR it can reach"
            )
    if data.exists():
        shutil.rmtree(data)  # an initdb that failed half way
    data.mkdir(mode=0o700, parents=True)
    pwfile = settings.state_dir / "postgres-initdb.pw"
    write_private(pwfile, settings.pg_password or "")
    if ids is not None:
        os.chown(data, *ids)
        os.chown(pwfile, *ids)
    argv = [
        str(postgres_bin_dir() / "initdb"),
        f"--pgdata={data}",
        f"--username={PG_USER}",
        f"--pwfile={pwfile}",
        "--auth=scram-sha-256",
        "--encoding=UTF8",
        "--locale=C.UTF-8",
        "--no-instructions",
    ]
    try:
        done = subprocess.run(as_server_user(argv), capture_output=True, text=True, timeout=120, cwd="/")
    finally:
        pwfile.unlink(missing_ok=True)
    if done.returncode != 0:
        raise StackError(f"initdb of {data} failed (exit {done.returncode}):\n{done.stdout}{done.stderr}")
    log.info("initialised PostgreSQL's data folder %s", data)
    return True


def postgres_argv(settings: StackSettings) -> list[str]:
    """The server, listening on SER_HOST:SER_PG_PORT over TCP only (no Unix socket), logging to stderr."""
    return as_server_user(
        [
            str(postgres_bin_dir() / "postgres"),
            "-D",
            str(pg_data_dir(settings)),
            "-h",
            settings.host,
            "-p",
            str(settings.pg_port),
            "-c",
            "unix_socket_directories=",
            "-c",
            f"max_connections={PG_MAX_CONNECTIONS}",
            "-c",
            "log_line_prefix=%m [%p] %q%u@%d ",
        ]
    )


def pg_connect(settings: StackSettings, database: str = "postgres"):
    import psycopg2

    return psycopg2.connect(
        host=settings.host,
        port=settings.pg_port,
        user=PG_USER,
        password=settings.pg_password,
        dbname=database,
        connect_timeout=int(HTTP_TIMEOUT_S),
    )


def postgres_status(settings: StackSettings) -> str | None:
    """The server's own status line in its data folder's ``postmaster.pid`` (``starting``, ``ready``,
    ``stopping``, ``standby``), as ``pg_ctl -w`` reads it; None without the file. Reading it connects
    to nothing, so waiting on it leaves no "the database system is starting up" FATAL in the log."""
    try:
        lines = (pg_data_dir(settings) / "postmaster.pid").read_text().splitlines()
    except OSError:
        return None
    return lines[7].strip() if len(lines) > 7 else "starting"


def check_postgres(settings: StackSettings) -> str | None:
    """None when the stack's PostgreSQL says it is ready (:func:`postgres_status`; no connection is
    tried before) and accepts the stack's user and answers a query, else the reason."""
    status = postgres_status(settings)
    if status != "ready":
        return f"PostgreSQL at {settings.host}:{settings.pg_port} is not ready (postmaster.pid status: {status or 'no file'})"
    try:
        with pg_connect(settings) as conn, conn.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
        conn.close()
    except Exception as exc:  # noqa: BLE001 - any failure is "unhealthy", reported with its reason
        return f"PostgreSQL at {settings.host}:{settings.pg_port}: {str(exc).strip()}"
    return None


def create_databases(settings: StackSettings) -> None:
    """Create each of :data:`PG_DATABASES` that the server does not have yet."""
    conn = pg_connect(settings)
    conn.autocommit = True
    try:
        with conn.cursor() as cursor:
            for name in PG_DATABASES:
                cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cursor.fetchone() is None:
                    cursor.execute(f'CREATE DATABASE "{name}"')
                    log.info("created database %s", name)
    finally:
        conn.close()


def stop_postgres(settings: StackSettings) -> None:
    """Ask a running server for a fast shutdown (roll back open sessions, checkpoint) before `down`
    signals its process group: SIGTERM alone is PostgreSQL's smart shutdown, which waits for every client."""
    pid = recorded_pid(settings.state_dir, "postgres")
    if pid is not None:
        try:
            os.kill(pid, signal.SIGINT)
        except ProcessLookupError:
            pass


def database_env(settings: StackSettings) -> dict[str, str]:
    """Where Prefect's server and MLflow's keep their data with SER_DB=postgres (nothing for SQLite:
    their SQLite defaults and the mlflow command's --backend-store-uri)."""
    if settings.db != "postgres":
        return {}
    return {
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": settings.database_url("prefect", "asyncpg"),
        "MLFLOW_BACKEND_STORE_URI": settings.database_url("mlflow"),
    }


def database_locked_lines(settings: StackSettings) -> int:
    """How many "database is locked" lines the servers logged since their latest start."""
    return sum(
        log_since_start(log_path(settings.state_dir, name)).count(SQLITE_BUSY)
        for name in ("prefect", "mlflow", "worker")
    )


def check_database(settings: StackSettings) -> str | None:
    """None when the stack's database serves: PostgreSQL answers (`check_postgres`) and no server logged
    "database is locked"; SQLite has no server and is always "ok" (see `database_note`)."""
    if settings.db != "postgres":
        return None
    reason = check_postgres(settings)
    locked = database_locked_lines(settings)
    if reason is None and locked:
        reason = f'{locked} "database is locked" line(s) in the stack\'s logs since start, with PostgreSQL'
    return reason


def database_note(settings: StackSettings) -> str:
    """What `infra/health` says about a healthy database: with SQLite, how contended it was (the lock
    waits the servers logged since they started), since Prefect retries them and they are no fault."""
    if settings.db == "postgres":
        return f"PostgreSQL, data in {pg_data_dir(settings)}"
    locked = database_locked_lines(settings)
    if not locked:
        return "SQLite, not contended since start"
    return (
        f'SQLite CONTENDED: {locked} "database is locked" line(s) in the logs since start (requests waited '
        "and were retried); for concurrent folds use SER_DB=postgres"
    )


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


def seaweed_volume_servers(settings: StackSettings) -> list[str]:
    """The volume servers the SeaweedFS master has in its topology (``GET /dir/status``)."""
    url = f"http://{settings.host}:{settings.weed_master_port}/dir/status"
    with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as response:
        topology = json.load(response).get("Topology") or {}
    return [
        node.get("Url", "?")
        for center in topology.get("DataCenters") or []
        for rack in center.get("Racks") or []
        for node in rack.get("DataNodes") or []
    ]


def check_s3(settings: StackSettings) -> str | None:
    """None when the S3 API lists buckets with the stack's credentials and, for the stack's own
    SeaweedFS, its master has a volume server, else the reason. The gateway answers
    ``list_buckets`` from the filer's metadata before the volume server has sent its first
    heartbeat; until it has, every object read or write fails with ``InternalError`` (seen under
    load right after a restart). An S3 endpoint elsewhere (``AWS_ENDPOINT_URL_S3``) is judged by
    ``list_buckets`` alone."""
    try:
        s3_client(settings).list_buckets()
    except Exception as exc:  # noqa: BLE001 - any failure is "unhealthy", reported with its reason
        return f"S3 list_buckets at {settings.s3_endpoint}: {exc}"
    if not settings.own_s3:
        return None  # not the stack's SeaweedFS: no master of ours to ask
    try:
        servers = seaweed_volume_servers(settings)
    except (OSError, ValueError) as exc:
        return f"SeaweedFS master at {settings.host}:{settings.weed_master_port}: {exc}"
    if not servers:
        return f"SeaweedFS master at {settings.host}:{settings.weed_master_port} has no volume server registered yet"
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
it (PrefectHQ/prefect#10188, #17473). A load limit of SQLite, not a fault; PostgreSQL has none, so
with SER_DB=postgres such a line is a fault like any other, and infra/health reports it."""

PG_FAULT = re.compile(
    r"^\S+ \S+ \S+ \[\d+\] (?:(?:\S+ )?(?:PANIC|FATAL)|\S+@(?:mlflow|optuna) ERROR):  "
    r"(?!terminating connection due to administrator command)",
    re.M,
)
"""A fault in the PostgreSQL server's log (`postgres_argv`'s ``log_line_prefix``): a PANIC or FATAL
line (a crash, a refused login, a full disk), or an ERROR line of the MLflow or Optuna database,
whose statements come from MLflow's server and our own Optuna storage: a statement refused there
(a duplicate key of two writers racing, a version registered the way MLflow's client does it,
flows/registry.py) is a fault of our code. Sessions ended by the server's own fast shutdown
(`infra/down`) are not faults, nor ERROR lines of Prefect's database, whose writes are Prefect's own
(its server absorbs a task run that arrives twice, ``pk_task_run``)."""


def stack_tracebacks(name: str, text: str, db: str) -> list[str]:
    """Faults of the stack itself in the log of component `name`, of a stack on database `db`
    (``sqlite`` or ``postgres``): every traceback in a server's log but, on SQLite only, the Prefect
    server's lock waits (:data:`SQLITE_BUSY`); in the worker's, those not printed for a failing flow
    or task run; in PostgreSQL's, its PANIC and FATAL lines and the MLflow and Optuna databases'
    ERROR lines (:data:`PG_FAULT`)."""
    if name == "postgres":
        return [text[match.start() :].split("\n", 1)[0] for match in PG_FAULT.finditer(text)]
    found = tracebacks(text, RUN_FAILURE if name == "worker" else None)
    if name == "prefect" and db == "sqlite":
        return [line for line in found if SQLITE_BUSY not in line]
    return found


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
    log holds a traceback of a fault since its latest start (`stack_tracebacks`: on SQLite, lock
    waits, which clients retry, are not faults; `database_note` counts them)."""
    if local:
        logfile = log_path(settings.state_dir, "prefect")
        found = stack_tracebacks("prefect", log_since_start(logfile), settings.db)
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
        str(mlflow_workers()),
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
    if settings.db == "postgres":
        mlflow.remove("--backend-store-uri")
        mlflow.remove(f"sqlite:///{state / 'mlflow.db'}")  # MLFLOW_BACKEND_STORE_URI: no password in argv
    database = (
        [
            Component(
                "postgres",
                settings.pg_port,
                postgres_argv(settings),
                check_postgres,
                f"postgresql://{settings.host}:{settings.pg_port}",
            )
        ]
        if settings.db == "postgres"
        else []
    )
    return [
        *database,
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
        **database_env(settings),
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
    if settings.db == "postgres":
        settings = ensure_pg_password(settings)
        init_postgres(settings)
    env = stack_env(settings)
    by_name = {component.name: component for component in components(settings)}
    s3, mlflow, prefect, worker = (by_name[name] for name in ("s3", "mlflow", "prefect", "worker"))
    started = []
    first = [by_name["postgres"], s3] if "postgres" in by_name else [s3]
    for component in first:
        if launch(settings, component, env):
            started.append(component.name)
    for component in first:
        wait_healthy(settings, component, timeout_s)
    if "postgres" in by_name:
        create_databases(settings)
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
    # the database last: its clients first (a fast shutdown, `stop_postgres`, then the process group)
    stopped = stop_recorded(settings.state_dir, [n for n in names if n != "postgres"])
    if "postgres" in names:
        stop_postgres(settings)
        stopped += stop_recorded(settings.state_dir, ["postgres"])
    if purge and settings.state_dir.exists():
        shutil.rmtree(settings.state_dir)
    return stopped


def health(settings: StackSettings, local: bool = True, scheduler: bool = True) -> dict[str, str | None]:
    """Reason each component is unhealthy (None when healthy), by component name, then (with
    `scheduler`) the reason the Prefect scheduler fails under the name ``scheduler`` and the
    reason trainings are blocked (`check_trainings`) under ``trainings``, and (with `local`) the
    database's under ``database`` (`check_database`).

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
    if local:
        result["database"] = check_database(settings)
    return result


# ----------------------------------------------------------------------------- backup and restore

BACKUP_FORMAT = 1
"""Version of the backup folder's layout (``backup.json``), checked by restore."""
PREFECT_BACKUP = "prefect.json"
PAGE = 200
"""Rows per request when reading the Prefect API's filter endpoints."""


def prefect_filter(client, path: str, body: dict | None = None) -> list[dict]:
    """Every row of a Prefect ``.../filter`` endpoint, read page by page."""
    rows: list[dict] = []
    while True:
        response = client.request("POST", path, json={**(body or {}), "limit": PAGE, "offset": len(rows)})
        response.raise_for_status()
        page = response.json()
        rows += page
        if len(page) < PAGE:
            return rows


def export_prefect(settings: StackSettings) -> dict:
    """The Prefect server's configuration (not its run history): work pools with their queues,
    deployments with their flows' names, automations, variables and global concurrency limits, as
    the API returns them."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: settings.prefect_api_url}):
        with get_client(sync_client=True) as client:
            pools = prefect_filter(client, "/work_pools/filter")
            flows = {f["id"]: f["name"] for f in prefect_filter(client, "/flows/filter")}
            deployments = prefect_filter(client, "/deployments/filter")
            for deployment in deployments:
                deployment["flow_name"] = flows[deployment["flow_id"]]
            return {
                "work_pools": pools,
                "work_queues": {
                    p["name"]: prefect_filter(client, f"/work_pools/{p['name']}/queues/filter") for p in pools
                },
                "deployments": deployments,
                "automations": prefect_filter(client, "/automations/filter"),
                "variables": prefect_filter(client, "/variables/filter"),
                "concurrency_limits": prefect_filter(client, "/v2/concurrency_limits/filter"),
            }


def _fields(row: dict, model) -> dict:
    """The keys of `row` that the create model (a Prefect client action schema) accepts."""
    return {key: value for key, value in row.items() if key in model.model_fields}


def import_prefect(settings: StackSettings, exported: dict) -> dict[str, int]:
    """Recreate `exported` (`export_prefect`) on an empty Prefect server: missing work pools and
    queues (queue limits set), concurrency limits with no slot held, variables, flows and
    deployments (schedules included), then automations, their deployment ids mapped to the new
    ones. Returns how many of each were created."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import (
        DeploymentCreate,
        DeploymentScheduleCreate,
        GlobalConcurrencyLimitCreate,
        VariableCreate,
        WorkPoolCreate,
        WorkQueueCreate,
    )
    from prefect.events.schemas.automations import AutomationCore
    from prefect.settings import PREFECT_API_URL, temporary_settings

    def send(client, method: str, path: str, body: dict) -> dict:
        response = client.request(method, path, json=body)
        if response.status_code >= 400:
            raise StackError(
                f"restore: {method} {path} answered {response.status_code}: {response.text[:500]}"
            )
        return response.json() if response.content else {}

    counts = dict.fromkeys(
        ("work_pools", "work_queues", "concurrency_limits", "variables", "deployments", "automations"), 0
    )
    ids: dict[str, str] = {}
    with temporary_settings(updates={PREFECT_API_URL: settings.prefect_api_url}):
        with get_client(sync_client=True) as client:
            pools = {p["name"] for p in prefect_filter(client, "/work_pools/filter")}
            for pool in exported["work_pools"]:
                if pool["name"] not in pools:
                    send(client, "POST", "/work_pools/", _fields(pool, WorkPoolCreate))
                    counts["work_pools"] += 1
            for pool_name, queues in exported["work_queues"].items():
                present = {
                    q["name"]: q for q in prefect_filter(client, f"/work_pools/{pool_name}/queues/filter")
                }
                for queue in queues:
                    body = _fields(queue, WorkQueueCreate)
                    body.pop("filter", None)
                    if queue["name"] in present:
                        send(
                            client,
                            "PATCH",
                            f"/work_pools/{pool_name}/queues/{queue['name']}",
                            {k: v for k, v in body.items() if k != "name"},
                        )
                    else:
                        send(client, "POST", f"/work_pools/{pool_name}/queues", body)
                        counts["work_queues"] += 1
            for limit in exported["concurrency_limits"]:
                send(
                    client,
                    "POST",
                    "/v2/concurrency_limits/",
                    {**_fields(limit, GlobalConcurrencyLimitCreate), "active_slots": 0},
                )
                counts["concurrency_limits"] += 1
            for variable in exported["variables"]:
                send(client, "POST", "/variables/", _fields(variable, VariableCreate))
                counts["variables"] += 1
            for deployment in exported["deployments"]:
                flow = send(client, "POST", "/flows/", {"name": deployment["flow_name"]})
                body = _fields(deployment, DeploymentCreate)
                body["flow_id"] = flow["id"]
                body["schedules"] = [
                    _fields(s, DeploymentScheduleCreate) for s in deployment.get("schedules", [])
                ]
                created = send(client, "POST", "/deployments/", body)
                ids[deployment["id"]] = created["id"]
                ids[deployment["flow_id"]] = flow["id"]
                counts["deployments"] += 1
            for automation in exported["automations"]:
                text = json.dumps(_fields(automation, AutomationCore))
                for old, new in ids.items():
                    text = text.replace(old, new)
                send(client, "POST", "/automations/", json.loads(text))
                counts["automations"] += 1
    return counts


def bucket_keys(client, bucket: str) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


def copy_bucket(settings: StackSettings, bucket: str, folder: Path, upload: bool) -> int:
    """Download every object of `bucket` into `folder` (keys as relative paths), or with `upload`
    put every file of `folder` into `bucket`; 8 transfers at once. Returns the number of objects."""
    from concurrent.futures import ThreadPoolExecutor

    client = settings.s3_client(max_attempts=3)
    if upload:
        files = [p for p in sorted(folder.rglob("*")) if p.is_file()]
        jobs = [(str(p), p.relative_to(folder).as_posix()) for p in files]

        def move(job):
            client.upload_file(job[0], bucket, job[1])
    else:
        jobs = [(str(folder / key), key) for key in bucket_keys(client, bucket) if not key.endswith("/")]

        def move(job):
            Path(job[0]).parent.mkdir(parents=True, exist_ok=True)
            client.download_file(bucket, job[1], job[0])

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(move, jobs))
    return len(jobs)


def pg_env(settings: StackSettings) -> dict[str, str]:
    """Environment for pg_dump / pg_restore: the stack's server and password."""
    return {
        **os.environ,
        "PGPASSWORD": settings.pg_password or "",
        "PGHOST": settings.host,
        "PGPORT": str(settings.pg_port),
        "PGUSER": PG_USER,
    }


def sqlite_files(settings: StackSettings) -> dict[str, Path]:
    """The SQLite databases a backup holds, by name (Prefect's is exported through its API instead)."""
    return {"mlflow": settings.state_dir / "mlflow.db", "optuna": settings.state_dir / "optuna.db"}


def dump_databases(settings: StackSettings, folder: Path) -> list[str]:
    """MLflow's tracking store and Optuna's studies into `folder`, consistent while the servers
    write: ``pg_dump -Fc`` of each database, or SQLite's online backup API. Returns the files written."""
    import sqlite3

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    if settings.db == "postgres":
        for name in ("mlflow", "optuna"):
            target = folder / f"{name}.dump"
            done = subprocess.run(
                [str(postgres_bin_dir() / "pg_dump"), "-Fc", "--no-owner", "-f", str(target), name],
                env=pg_env(settings),
                capture_output=True,
                text=True,
                timeout=600,
            )
            if done.returncode != 0:
                raise StackError(f"pg_dump {name} failed (exit {done.returncode}): {done.stderr}")
            written.append(target.name)
        return written
    for name, path in sqlite_files(settings).items():
        if not path.exists():
            continue
        source, target = sqlite3.connect(path), sqlite3.connect(folder / f"{name}.db")
        try:
            source.backup(target)
        finally:
            source.close()
            target.close()
        written.append(f"{name}.db")
    return written


def restore_databases(settings: StackSettings, folder: Path, files: list[str]) -> None:
    """Put the dumped databases back while MLflow's server is stopped (the caller restarts it):
    drop and recreate each PostgreSQL database and ``pg_restore`` it, or copy the SQLite files in."""
    if settings.db == "postgres":
        conn = pg_connect(settings)
        conn.autocommit = True
        try:
            with conn.cursor() as cursor:
                for file in files:
                    name = file.removesuffix(".dump")
                    cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                    cursor.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        for file in files:
            name = file.removesuffix(".dump")
            done = subprocess.run(
                [
                    str(postgres_bin_dir() / "pg_restore"),
                    "--no-owner",
                    "--exit-on-error",
                    "-d",
                    name,
                    str(folder / file),
                ],
                env=pg_env(settings),
                capture_output=True,
                text=True,
                timeout=600,
            )
            if done.returncode != 0:
                raise StackError(f"pg_restore {file} failed (exit {done.returncode}): {done.stderr}")
        return
    for file in files:
        target = sqlite_files(settings)[file.removesuffix(".db")]
        shutil.copyfile(folder / file, target)


def backup(settings: StackSettings, dest: Path) -> dict:
    """Back up the running stack into the empty or new folder `dest`: MLflow's runs and registry
    (`dump_databases`) and its artifact bucket, the data bucket (manifests, staged corpora), Optuna's
    studies, and the Prefect server's configuration (`export_prefect`). Returns ``backup.json``'s content."""
    if dest.exists() and any(dest.iterdir()):
        raise StackError(f"backup: {dest} is not empty; give a new or empty folder")
    if health(settings, scheduler=False).get("mlflow") is not None:
        raise StackError("backup: the stack is not running (infra/health); start it with infra/up")
    began = time.monotonic()
    dest.mkdir(parents=True, exist_ok=True)
    prefect = export_prefect(settings)
    (dest / PREFECT_BACKUP).write_text(json.dumps(prefect, indent=1))
    databases = dump_databases(settings, dest / "db")
    objects = {
        role: copy_bucket(settings, bucket, dest / "s3" / role, upload=False)
        for role, bucket in (("mlflow", settings.mlflow_bucket), ("data", settings.data_bucket))
    }
    summary = {
        "format": BACKUP_FORMAT,
        "db": settings.db,
        "taken": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "databases": databases,
        "objects": objects,
        "prefect": {key: len(rows) for key, rows in prefect.items()},
        "seconds": round(time.monotonic() - began, 1),
    }
    (dest / "backup.json").write_text(json.dumps(summary, indent=1))
    return summary


def stack_is_empty(settings: StackSettings) -> list[str]:
    """What keeps the running stack from being a restore target: objects in its buckets,
    deployments, registered models or runs. Empty when it is as infra/up leaves a purged stack."""
    import mlflow

    found = []
    client = settings.s3_client()
    for bucket in (settings.mlflow_bucket, settings.data_bucket):
        if bucket_keys(client, bucket):
            found.append(f"objects in s3://{bucket}")
    with prefect_api(settings) as prefect:
        if prefect.read_deployments(limit=1):
            found.append("Prefect deployments")
    tracking = mlflow.MlflowClient(settings.tracking_uri)
    if tracking.search_registered_models(max_results=1):
        found.append("registered models in MLflow")
    if tracking.search_experiments(max_results=2, filter_string="name != 'Default'"):
        found.append("MLflow experiments")
    return found


def restore(settings: StackSettings, src: Path, timeout_s: float) -> dict:
    """Restore the backup in `src` (`backup`) onto the running, empty stack (`stack_is_empty`;
    e.g. after ``infra/down --purge && infra/up``): databases with MLflow's server stopped and
    started again, the buckets' objects, then the Prefect configuration. The stack's database kind
    (SER_DB) must be the backup's."""
    began = time.monotonic()
    meta_path = src / "backup.json"
    if not meta_path.exists():
        raise StackError(f"restore: {meta_path} not found; expected a folder written by infra/backup")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != BACKUP_FORMAT:
        raise StackError(
            f"restore: {meta_path} has format {meta.get('format')!r}; this infra/restore reads {BACKUP_FORMAT}"
        )
    if meta["db"] != settings.db:
        raise StackError(
            f"restore: the backup was taken on SER_DB={meta['db']}, this stack runs SER_DB={settings.db}; set SER_DB={meta['db']}"
        )
    unhealthy = {k: v for k, v in health(settings, scheduler=False).items() if v is not None}
    if unhealthy:
        raise StackError(f"restore: the stack is not healthy ({unhealthy}); start it with infra/up")
    occupied = stack_is_empty(settings)
    if occupied:
        raise StackError(
            f"restore: the stack is not empty ({', '.join(occupied)}); restore onto a purged stack: infra/down --purge && infra/up"
        )
    stop_recorded(settings.state_dir, ["mlflow"])
    restore_databases(settings, src / "db", meta["databases"])
    up(settings, timeout_s)
    objects = {
        role: copy_bucket(settings, bucket, src / "s3" / role, upload=True)
        for role, bucket in (("mlflow", settings.mlflow_bucket), ("data", settings.data_bucket))
    }
    counts = import_prefect(settings, json.loads((src / PREFECT_BACKUP).read_text()))
    return {"objects": objects, "prefect": counts, "seconds": round(time.monotonic() - began, 1)}


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
    backup_parser = sub.add_parser("backup", help="back up the running stack into a new or empty folder")
    backup_parser.add_argument("dir", type=Path)
    restore_parser = sub.add_parser("restore", help="restore a backup onto the running, empty stack")
    restore_parser.add_argument("dir", type=Path)
    restore_parser.add_argument("--timeout", type=float, default=float(os.environ.get("SER_UP_TIMEOUT", 180)))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # the Prefect client logs every HTTP request at INFO through httpx: not for a person's terminal
    logging.getLogger("httpx").setLevel(logging.WARNING)
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
    if args.command in ("backup", "restore"):
        try:
            if args.command == "backup":
                summary = backup(settings, args.dir.resolve())
            else:
                summary = restore(settings, args.dir.resolve(), args.timeout)
        except StackError as exc:
            print(f"infra/{args.command} failed: {exc}", file=sys.stderr)
            return 1
        print(f"infra/{args.command} {args.dir}: {json.dumps(summary)}")
        return 0
    if args.command == "health":
        table = health(settings)
        where = {c.name: c.url for c in components(settings)}
        where["scheduler"] = f"deployments of {where['prefect']}"
        where["trainings"] = f"train-<corpus> limits of {where['prefect']}"
        where["database"] = "database of Prefect, MLflow, Optuna"
        notes = {"database": database_note(settings)}
        for name, reason in table.items():
            said = reason if reason is not None else notes.get(name, "")
            print(f"{name:9} {'ok' if reason is None else 'DOWN':5} {where[name]:44} {said}")
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
