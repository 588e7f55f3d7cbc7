"""The Prefect server's configuration (not its run history) through its API, for infra/backup and
infra/restore: work pools and their queues, deployments, automations, variables and global
concurrency limits (`export_prefect`), recreated on an empty server (`import_prefect`).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator

from ser_infra.component import StackError
from ser_stack.settings import StackSettings

PAGE = 200
"""Rows per request when reading the Prefect API's filter endpoints."""
KINDS = ("work_pools", "work_queues", "concurrency_limits", "variables", "deployments", "automations")
"""What `import_prefect` creates, in order, and counts."""


@contextlib.contextmanager
def prefect_client(settings: StackSettings) -> Iterator:
    """The Prefect client (its retries on) of the stack's server, for raw API requests."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: settings.prefect_api_url}):
        with get_client(sync_client=True) as client:
            yield client


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
    with prefect_client(settings) as client:
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


def send(client, method: str, path: str, body: dict) -> dict:
    """One API request; its JSON answer, or StackError with the server's reason."""
    response = client.request(method, path, json=body)
    if response.status_code >= 400:
        raise StackError(f"restore: {method} {path} answered {response.status_code}: {response.text[:500]}")
    return response.json() if response.content else {}


def import_work_pools(client, exported: dict) -> dict[str, int]:
    """The missing work pools, then each pool's queues: missing ones created, present ones updated
    (their limits set). Returns how many pools and queues were created."""
    from prefect.client.schemas.actions import WorkPoolCreate, WorkQueueCreate

    counts = {"work_pools": 0, "work_queues": 0}
    pools = {p["name"] for p in prefect_filter(client, "/work_pools/filter")}
    for pool in exported["work_pools"]:
        if pool["name"] not in pools:
            send(client, "POST", "/work_pools/", _fields(pool, WorkPoolCreate))
            counts["work_pools"] += 1
    for pool_name, queues in exported["work_queues"].items():
        present = {q["name"]: q for q in prefect_filter(client, f"/work_pools/{pool_name}/queues/filter")}
        for queue in queues:
            body = _fields(queue, WorkQueueCreate)
            body.pop("filter", None)
            if queue["name"] in present:
                update = {k: v for k, v in body.items() if k != "name"}
                send(client, "PATCH", f"/work_pools/{pool_name}/queues/{queue['name']}", update)
            else:
                send(client, "POST", f"/work_pools/{pool_name}/queues", body)
                counts["work_queues"] += 1
    return counts


def import_limits_and_variables(client, exported: dict) -> dict[str, int]:
    """Global concurrency limits (no slot held) and variables. Returns how many of each were created."""
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, VariableCreate

    for limit in exported["concurrency_limits"]:
        body = {**_fields(limit, GlobalConcurrencyLimitCreate), "active_slots": 0}
        send(client, "POST", "/v2/concurrency_limits/", body)
    for variable in exported["variables"]:
        send(client, "POST", "/variables/", _fields(variable, VariableCreate))
    return {
        "concurrency_limits": len(exported["concurrency_limits"]),
        "variables": len(exported["variables"]),
    }


def import_deployments(client, exported: dict) -> dict[str, str]:
    """Each deployment (schedules included) with its flow; returns the new id of each old
    deployment and flow id."""
    from prefect.client.schemas.actions import DeploymentCreate, DeploymentScheduleCreate

    ids: dict[str, str] = {}
    for deployment in exported["deployments"]:
        flow = send(client, "POST", "/flows/", {"name": deployment["flow_name"]})
        body = _fields(deployment, DeploymentCreate)
        body["flow_id"] = flow["id"]
        body["schedules"] = [_fields(s, DeploymentScheduleCreate) for s in deployment.get("schedules", [])]
        created = send(client, "POST", "/deployments/", body)
        ids[deployment["id"]] = created["id"]
        ids[deployment["flow_id"]] = flow["id"]
    return ids


def import_automations(client, exported: dict, ids: dict[str, str]) -> int:
    """Each automation, the deployment and flow ids it names replaced by `ids`. Returns how many."""
    from prefect.events.schemas.automations import AutomationCore

    for automation in exported["automations"]:
        text = json.dumps(_fields(automation, AutomationCore))
        for old, new in ids.items():
            text = text.replace(old, new)
        send(client, "POST", "/automations/", json.loads(text))
    return len(exported["automations"])


def import_prefect(settings: StackSettings, exported: dict) -> dict[str, int]:
    """Recreate `exported` (`export_prefect`) on an empty Prefect server: missing work pools and
    queues (queue limits set), concurrency limits with no slot held, variables, flows and
    deployments (schedules included), then automations, their deployment ids mapped to the new
    ones. Returns how many of each were created."""
    with prefect_client(settings) as client:
        counts = import_work_pools(client, exported)
        counts.update(import_limits_and_variables(client, exported))
        ids = import_deployments(client, exported)
        counts["deployments"] = len(exported["deployments"])
        counts["automations"] = import_automations(client, exported, ids)
    return {kind: counts[kind] for kind in KINDS}
