"""The stack's health table (`health`, what infra/health prints): each component's own check, then
three checks of the stack as a whole: the Prefect server's scheduler, trainings blocked by a slot
no training holds, and the database.
"""

from __future__ import annotations

import time
from datetime import UTC
from typing import TYPE_CHECKING

from ser_infra.lifecycle import components
from ser_infra.logfaults import SQLITE_BUSY, stack_tracebacks
from ser_infra.postgres import check_postgres, pg_data_dir
from ser_infra.prefect_server import prefect_api
from ser_infra.state import log_path, log_since_start, recorded_pid
from ser_stack.settings import StackSettings

if TYPE_CHECKING:
    from prefect.client.schemas.filters import FlowRunFilter

API_PAGE = 200
"""Objects one Prefect API read returns at most (the server's default page limit)."""
SCHEDULER_GRACE_S = 90.0
"""A deployment whose schedule changed less than this long ago may not have its runs yet (the
server's scheduler visits recently changed deployments every few seconds, all others every minute)."""


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


# ----------------------------------------------------------------------------- the scheduler


def runs_in(state_type: str) -> FlowRunFilter:
    """The flow-run filter of one state type (``SCHEDULED``, ``RUNNING``, …)."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType

    return FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[state_type])))


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


# ----------------------------------------------------------------------------- trainings


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


# ----------------------------------------------------------------------------- the database


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
