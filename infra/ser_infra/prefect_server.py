"""Components `prefect` and `worker`: the Prefect server (SQLite under PREFECT_HOME, or with
SER_DB=postgres the database ``prefect``) and one process worker polling the stack's work pool.

Start: the server (`prefect_component`); once it is healthy, the work pool (`ensure_work_pool`),
then the worker (`worker_component`). Check: `check_prefect`, `check_worker`. Stop: their process
groups, the worker first. The health checks that read the server's deployments and limits
(scheduler, trainings) are in health.py; all talk to it through `prefect_api`.
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from ser_infra.component import BIN, HTTP_TIMEOUT_S, Component
from ser_stack.processes import http_check
from ser_stack.settings import REPO_ROOT, StackSettings

if TYPE_CHECKING:
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.objects import Worker

log = logging.getLogger("ser.infra")

WORKER_NAME = "ser-worker"


@contextlib.contextmanager
def prefect_api(settings: StackSettings) -> Iterator[SyncPrefectClient]:
    """The stack's Prefect server through the Prefect client, as the flows talk to it, with short
    timeouts and none of the client's retries: a health check must answer fast."""
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.settings import PREFECT_CLIENT_MAX_RETRIES, temporary_settings

    client = SyncPrefectClient(settings.prefect_api_url, httpx_settings={"timeout": HTTP_TIMEOUT_S})
    with temporary_settings({PREFECT_CLIENT_MAX_RETRIES: 0}), client:
        yield client


def prefect_component(settings: StackSettings) -> Component:
    argv = [
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
    url = settings.prefect_api_url.removesuffix("/api")
    return Component("prefect", settings.prefect_port, argv, check_prefect, url)


def worker_component(settings: StackSettings) -> Component:
    argv = [
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
    return Component("worker", None, argv, check_worker, f"work pool {settings.work_pool}")


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
