"""A training's slot of ``train-<corpus>`` survives neither its process nor a server restart.

The fault: a training holds its corpus's slot (flows/limits.py) when its process is SIGKILLed and
the Prefect server is restarted (infra/down and up, a crash). Prefect's default lease storage is
the server's memory: after the restart the lease is forgotten but the slot stays counted, and every
later training of the corpus waits for ever. The stack keeps leases on disk (infra/ser_infra/environment.py), so
the server's repossessor frees the slot once the dead holder's lease expires. This test runs that
on a Prefect server of its own, with the shortest lease the server accepts.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.settings import PREFECT_API_URL, temporary_settings

pytestmark = [pytest.mark.integration, pytest.mark.own_servers, pytest.mark.slow]

LEASE_S = 60.0  # the server's minimum
REPOSSESS_WAIT_S = LEASE_S + 120.0  # the lease, the repossessor's 15 s loop, a loaded machine

HOLDER = """
import sys, time
from prefect.concurrency.sync import concurrency
with concurrency(sys.argv[1], occupy=1, strict=True, lease_duration=float(sys.argv[2])):
    print("holding", flush=True)
    time.sleep(3600)
"""


def active_slots(api_url: str, name: str) -> int:
    with temporary_settings(updates={PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        return client.read_global_concurrency_limit_by_name(name).active_slots


def test_slot_of_a_killed_training_is_freed_after_a_server_restart(private_prefect):
    api_url = private_prefect.settings.prefect_api_url
    name = "train-leasetest"
    with temporary_settings(updates={PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))

    env = {**os.environ, "PREFECT_API_URL": api_url}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, name, str(LEASE_S)],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "holding", "the holder process never acquired the slot"
        assert active_slots(api_url, name) == 1
    finally:
        os.killpg(holder.pid, signal.SIGKILL)  # dies holding the slot: no release, no more renewals
        holder.wait(timeout=30)

    private_prefect.crash()
    private_prefect.start()
    assert active_slots(api_url, name) == 1, "the restarted server lost the slot count itself"

    deadline = time.monotonic() + REPOSSESS_WAIT_S
    while (held := active_slots(api_url, name)) and time.monotonic() < deadline:
        time.sleep(5)
    assert held == 0, (
        f"{name} still has {held} slot held {REPOSSESS_WAIT_S:.0f} s after its holder died and the server restarted: "
        "the lease was lost with the restart (is PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE on disk? infra/ser_infra/environment.py)"
    )
