"""Run a deployment and show its progress in the terminal: ``python -m flows.follow NAME --params JSON``.

``prefect deployment run --watch`` prints only state changes; a training's progress (each fold,
each epoch, the release model, the promotion) is in the run's log. This starts a run of the
deployment, prints every log line of the run and of its subflows as it arrives (the train
flow's ``[fold-0] epoch 3/20 ...`` lines among them), and exits with 0 when the run completed,
1 otherwise, naming its final state. infra/demo uses it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from uuid import UUID

from prefect import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterParentFlowRunId,
    LogFilter,
    LogFilterFlowRunId,
    LogFilterTimestamp,
)
from prefect.client.schemas.sorting import LogSort
from prefect.deployments import run_deployment

POLL_S = 2.0
LATE_LOGS = timedelta(seconds=60)
"""Logs reach the server in batches, so a line can arrive after later ones: each poll looks
back this far (lines already printed are skipped)."""


class RunLogReader:
    """New log lines of a flow run and its subflows, each line once, oldest first."""

    def __init__(self, client, flow_run_id: UUID):
        self.client = client
        self.flow_run_id = flow_run_id
        self.printed: set[UUID] = set()
        self.since: datetime | None = None

    def run_ids(self) -> list[UUID]:
        children = self.client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[self.flow_run_id])
            )
        )
        return [self.flow_run_id, *(child.id for child in children)]

    def new_lines(self) -> list[str]:
        log_filter = LogFilter(
            flow_run_id=LogFilterFlowRunId(any_=self.run_ids()),
            timestamp=LogFilterTimestamp(after_=self.since - LATE_LOGS) if self.since else None,
        )
        lines = []
        offset = 0
        while True:
            page = self.client.read_logs(
                log_filter=log_filter, limit=200, offset=offset, sort=LogSort.TIMESTAMP_ASC
            )
            for log in page:
                if log.id not in self.printed:
                    self.printed.add(log.id)
                    lines.append(f"{log.timestamp:%H:%M:%S} {log.message}")
                    self.since = max(self.since or log.timestamp, log.timestamp)
            if len(page) < 200:
                return lines
            offset += len(page)


DRAIN_QUIET_POLLS = 2
DRAIN_MAX_POLLS = 10
"""After the run's final state, its last log batch can still be on its way (the flow's process sends
logs in batches and the final one at exit; seen under load: a run's every line arrived after its
Completed state): keep reading until DRAIN_QUIET_POLLS polls in a row bring nothing, at most DRAIN_MAX_POLLS."""


def drain(
    reader: RunLogReader, out: Callable[[str], None], sleep: Callable[[float], None] = time.sleep
) -> None:
    """Print the log lines that arrive after the run ended (see DRAIN_QUIET_POLLS)."""
    quiet = 0
    for _ in range(DRAIN_MAX_POLLS):
        sleep(POLL_S)
        lines = reader.new_lines()
        for line in lines:
            out(line)
        quiet = 0 if lines else quiet + 1
        if quiet >= DRAIN_QUIET_POLLS:
            return


def follow(deployment: str, parameters: dict, timeout_s: float, out: Callable[[str], None] = print) -> bool:
    """Start a run of ``deployment`` (``<flow>/<deployment>``) with ``parameters``, print its log
    until it ends or ``timeout_s`` passes; True when it completed."""
    run = run_deployment(deployment, parameters=parameters, timeout=0)
    out(f"flow run {run.name} ({run.id}) of {deployment}")
    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        reader = RunLogReader(client, run.id)
        while True:
            state = client.read_flow_run(run.id).state
            for line in reader.new_lines():
                out(line)
            if state is not None and state.is_final():
                drain(reader, out)
                break
            if time.monotonic() > deadline:
                out(
                    f"{deployment}: still {state.name if state else 'pending'} after {timeout_s:.0f} s; stopped following it"
                )
                return False
            time.sleep(POLL_S)
    out(
        f"{deployment}: {state.name}"
        + (f" ({state.message})" if state.message and not state.is_completed() else "")
    )
    return state.is_completed()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.follow", description=__doc__.splitlines()[0])
    parser.add_argument("deployment", help="<flow>/<deployment>, e.g. train/train-ravdess")
    parser.add_argument("--params", default="{}", type=json.loads, help="flow parameters as a JSON object")
    parser.add_argument(
        "--timeout", type=float, default=3600, help="seconds to follow the run (default 3600)"
    )
    args = parser.parse_args(argv)
    return (
        0
        if follow(args.deployment, args.params, args.timeout, out=lambda line: print(line, flush=True))
        else 1
    )


if __name__ == "__main__":
    sys.exit(main())
