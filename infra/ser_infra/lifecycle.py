"""The stack's components in start order (`components`), and starting and stopping them all
(`up`, `down`: what infra/up and infra/down do).

`up` starts in three steps, each waiting until its components are healthy before the next: the
stores (PostgreSQL with SER_DB=postgres, SeaweedFS) and what they must hold (databases, buckets);
the MLflow and Prefect servers; the work pool and its worker. `down` stops in the reverse order.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping

from ser_infra.component import Component, launch, wait_healthy
from ser_infra.environment import stack_env
from ser_infra.mlflow_server import mlflow_component
from ser_infra.postgres import (
    create_databases,
    ensure_pg_password,
    init_postgres,
    postgres_component,
    stop_postgres,
)
from ser_infra.prefect_server import ensure_work_pool, prefect_component, worker_component
from ser_infra.seaweedfs import create_buckets, ensure_credentials, s3_component, write_s3_config
from ser_infra.state import recorded_names, stop_recorded
from ser_stack.settings import StackSettings

STOP_ORDER = ("worker", "prefect", "mlflow", "s3")
"""How `down` stops the components: each before what it needs (PostgreSQL goes last of all)."""


def components(settings: StackSettings) -> list[Component]:
    """Every component of the stack on `settings`, in start order."""
    database = [postgres_component(settings)] if settings.db == "postgres" else []
    return [
        *database,
        s3_component(settings),
        mlflow_component(settings),
        prefect_component(settings),
        worker_component(settings),
    ]


def prepare_state(settings: StackSettings) -> StackSettings:
    """The state folder's credentials, configuration and data folders before the first start; the
    settings with the credentials generated now."""
    settings = ensure_credentials(settings)
    write_s3_config(settings)
    settings.prefect_home.mkdir(parents=True, exist_ok=True)
    if settings.db == "postgres":
        settings = ensure_pg_password(settings)
        init_postgres(settings)
    return settings


def start_together(
    settings: StackSettings, group: list[Component], env: Mapping[str, str], timeout_s: float
) -> list[str]:
    """Start each of `group` that is not running, then wait until all are healthy. Returns those started."""
    started = [component.name for component in group if launch(settings, component, env)]
    for component in group:
        wait_healthy(settings, component, timeout_s)
    return started


def up(settings: StackSettings, timeout_s: float) -> list[str]:
    """Start every component not already running and wait until all are healthy. Returns those started."""
    settings = prepare_state(settings)
    env = stack_env(settings)
    by_name = {component.name: component for component in components(settings)}
    stores = [by_name[name] for name in ("postgres", "s3") if name in by_name]
    started = start_together(settings, stores, env, timeout_s)
    if "postgres" in by_name:
        create_databases(settings)
    create_buckets(settings)
    started += start_together(settings, [by_name["mlflow"], by_name["prefect"]], env, timeout_s)
    ensure_work_pool(settings, env)
    started += start_together(settings, [by_name["worker"]], env, timeout_s)
    return started


def down(settings: StackSettings, purge: bool) -> list[str]:
    """Stop what `up` started (worker first, S3 last); with `purge`, also delete the state folder."""
    recorded = recorded_names(settings.state_dir)
    names = [n for n in STOP_ORDER if n in recorded] + [n for n in recorded if n not in STOP_ORDER]
    # the database last: its clients first (a fast shutdown, `stop_postgres`, then the process group)
    stopped = stop_recorded(settings.state_dir, [n for n in names if n != "postgres"])
    if "postgres" in names:
        stop_postgres(settings)
        stopped += stop_recorded(settings.state_dir, ["postgres"])
    if purge and settings.state_dir.exists():
        shutil.rmtree(settings.state_dir)
    return stopped
