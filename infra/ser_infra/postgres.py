"""Component `postgres` (SER_DB=postgres only): one PostgreSQL server in the state folder holding
Prefect's, MLflow's and Optuna's databases.

Start: `ensure_pg_password`, `init_postgres` (``initdb`` on the first start), then the server
(`postgres_component`); once it is ready, `create_databases`. Check: `check_postgres`. Stop:
`stop_postgres` (a fast shutdown), then its process group, after every client of it.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import signal
import subprocess
from pathlib import Path

from ser_infra.component import HTTP_TIMEOUT_S, Component, StackError
from ser_infra.state import create_private_json, recorded_pid, write_private
from ser_stack.process_settings import ProcessSettings
from ser_stack.settings import PG_CREDENTIALS_FILE, PG_USER, StackSettings

log = logging.getLogger("ser.infra")

PG_DATABASES = ("prefect", "mlflow", "optuna")
"""The databases the stack creates on its PostgreSQL server: Prefect's, MLflow's tracking store, Optuna's studies."""
PG_OS_USER = "postgres"
"""The system user that runs the server when the stack is started as root (PostgreSQL refuses to run as root)."""
PG_MAX_CONNECTIONS = 300
"""Prefect's server (a pool of 5 + 10 per process), MLflow's workers, every flow run's Optuna storage."""
LOG_LINE_PREFIX = "%m [%p] %q%u@%d "
"""How the server heads each line of its log: time, pid, user@database (logfaults.PG_FAULT reads it)."""


def postgres_bin_dir() -> Path:
    """Folder of the PostgreSQL server programs: ``SER_PG_BIN``, else the newest Debian version under
    /usr/lib/postgresql, else the folder of an ``initdb`` on PATH."""
    configured = ProcessSettings.from_env().pg_bin
    if configured:
        return Path(configured)
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
    create_private_json(path, {"user": PG_USER, "password": secrets.token_urlsafe(24)})
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


def postgres_component(settings: StackSettings) -> Component:
    """The server, listening on SER_HOST:SER_PG_PORT over TCP only (no Unix socket), logging to stderr."""
    argv = as_server_user(
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
            f"log_line_prefix={LOG_LINE_PREFIX}",
        ]
    )
    url = f"postgresql://{settings.host}:{settings.pg_port}"
    return Component("postgres", settings.pg_port, argv, check_postgres, url)


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


def pg_env(settings: StackSettings) -> dict[str, str]:
    """Environment for pg_dump / pg_restore: the stack's server and password."""
    return {
        **os.environ,
        "PGPASSWORD": settings.pg_password or "",
        "PGHOST": settings.host,
        "PGPORT": str(settings.pg_port),
        "PGUSER": PG_USER,
    }


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
