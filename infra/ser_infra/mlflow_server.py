"""Component `mlflow`: the MLflow tracking server, its runs and registry in SQLite in the state
folder (or, with SER_DB=postgres, the database ``mlflow``, given by ``MLFLOW_BACKEND_STORE_URI`` in
its environment: postgres.database_env), its artifacts proxied to ``s3://<mlflow bucket>/artifacts``.

Start: the process (`mlflow_component`). Check: `check_mlflow`. Stop: its process group.
"""

from __future__ import annotations

from pathlib import Path

from ser_infra.component import BIN, HTTP_TIMEOUT_S, Component
from ser_stack.process_settings import ProcessSettings
from ser_stack.processes import http_check
from ser_stack.settings import StackSettings


def mlflow_workers() -> int:
    """Worker processes of the MLflow server: ``SER_MLFLOW_WORKERS`` (default 1: each holds about 250 MiB,
    and one answered the load benchmark's 4 concurrent folds, docs/RESULTS.md §9)."""
    return ProcessSettings.from_env().mlflow_workers


def sqlite_store(settings: StackSettings) -> Path:
    """The tracking store's SQLite file (SER_DB=sqlite)."""
    return settings.state_dir / "mlflow.db"


def mlflow_component(settings: StackSettings) -> Component:
    # with PostgreSQL the store comes from MLFLOW_BACKEND_STORE_URI: no password in argv
    store = (
        [] if settings.db == "postgres" else ["--backend-store-uri", f"sqlite:///{sqlite_store(settings)}"]
    )
    argv = [
        str(BIN / "mlflow"),
        "server",
        "--host",
        settings.host,
        "--port",
        str(settings.mlflow_port),
        *store,
        "--artifacts-destination",
        f"s3://{settings.mlflow_bucket}/artifacts",
        "--serve-artifacts",
        "--workers",
        str(mlflow_workers()),
    ]
    return Component("mlflow", settings.mlflow_port, argv, check_mlflow, settings.tracking_uri)


def check_mlflow(settings: StackSettings) -> str | None:
    return http_check(f"{settings.tracking_uri}/health", HTTP_TIMEOUT_S)
