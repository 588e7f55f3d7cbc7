"""Back up the running stack into a folder and restore it onto an empty one (infra/backup,
infra/restore): MLflow's runs and registry and Optuna's studies (the databases), every object of
the MLflow artifact bucket and of the data bucket, and the Prefect server's configuration
(prefect_config.py). Prefect's run history is not kept.

A backup folder holds ``backup.json`` (what it holds, :data:`BACKUP_FORMAT`), ``prefect.json``,
``db/`` (``<name>.dump`` from ``pg_dump -Fc``, or ``<name>.db`` SQLite copies) and
``s3/mlflow/``, ``s3/data/`` (one file per object, its key as the relative path).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

from ser_infra.component import StackError
from ser_infra.health import health
from ser_infra.lifecycle import up
from ser_infra.mlflow_server import sqlite_store
from ser_infra.postgres import pg_connect, pg_env, postgres_bin_dir
from ser_infra.prefect_config import export_prefect, import_prefect
from ser_infra.prefect_server import prefect_api
from ser_infra.state import stop_recorded
from ser_stack.settings import StackSettings

BACKUP_FORMAT = 1
"""Version of the backup folder's layout (``backup.json``), checked by restore."""
PREFECT_BACKUP = "prefect.json"
DUMPED_DATABASES = ("mlflow", "optuna")
"""The databases a backup holds (Prefect's is exported through its API instead)."""


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


def copy_buckets(settings: StackSettings, folder: Path, upload: bool) -> dict[str, int]:
    """`copy_bucket` of the MLflow and the data bucket from or to `folder`/s3/mlflow and /data."""
    return {
        role: copy_bucket(settings, bucket, folder / "s3" / role, upload)
        for role, bucket in (("mlflow", settings.mlflow_bucket), ("data", settings.data_bucket))
    }


def sqlite_files(settings: StackSettings) -> dict[str, Path]:
    """The SQLite databases a backup holds, by name (SER_DB=sqlite)."""
    return {"mlflow": sqlite_store(settings), "optuna": settings.state_dir / "optuna.db"}


def run_pg_tool(settings: StackSettings, argv: list[str], what: str) -> None:
    """Run a PostgreSQL client program (pg_dump, pg_restore) on the stack's server; StackError if it fails."""
    done = subprocess.run(
        [str(postgres_bin_dir() / argv[0]), *argv[1:]],
        env=pg_env(settings),
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0:
        raise StackError(f"{what} failed (exit {done.returncode}): {done.stderr}")


def dump_databases(settings: StackSettings, folder: Path) -> list[str]:
    """MLflow's tracking store and Optuna's studies into `folder`, consistent while the servers
    write: ``pg_dump -Fc`` of each database, or SQLite's online backup API. Returns the files written."""
    import sqlite3

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    if settings.db == "postgres":
        for name in DUMPED_DATABASES:
            target = folder / f"{name}.dump"
            run_pg_tool(
                settings, ["pg_dump", "-Fc", "--no-owner", "-f", str(target), name], f"pg_dump {name}"
            )
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
    if settings.db != "postgres":
        for file in files:
            shutil.copyfile(folder / file, sqlite_files(settings)[file.removesuffix(".db")])
        return
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
        argv = [
            "pg_restore",
            "--no-owner",
            "--exit-on-error",
            "-d",
            file.removesuffix(".dump"),
            str(folder / file),
        ]
        run_pg_tool(settings, argv, f"pg_restore {file}")


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
    objects = copy_buckets(settings, dest, upload=False)
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


def read_backup_meta(settings: StackSettings, src: Path) -> dict:
    """``backup.json`` of the backup in `src`, checked against this infra/restore and the stack's SER_DB."""
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
    return meta


def restore(settings: StackSettings, src: Path, timeout_s: float) -> dict:
    """Restore the backup in `src` (`backup`) onto the running, empty stack (`stack_is_empty`;
    e.g. after ``infra/down --purge && infra/up``): databases with MLflow's server stopped and
    started again, the buckets' objects, then the Prefect configuration. The stack's database kind
    (SER_DB) must be the backup's."""
    began = time.monotonic()
    meta = read_backup_meta(settings, src)
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
    objects = copy_buckets(settings, src, upload=True)
    counts = import_prefect(settings, json.loads((src / PREFECT_BACKUP).read_text()))
    return {"objects": objects, "prefect": counts, "seconds": round(time.monotonic() - began, 1)}
