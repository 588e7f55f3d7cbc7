"""What a component of the stack is, and how one is started and waited for.

A component (`Component`) is one long-running process: its command line, the port it must find
free, its health check and the address a person reaches it at. Each component's module (seaweedfs,
postgres, mlflow_server, prefect_server) builds its own; lifecycle.py holds them in start order.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ser_infra.state import log_path, recorded_pid, start_process, tail
from ser_stack.processes import NotReadyError, wait_ready
from ser_stack.settings import REPO_ROOT, StackSettings

BIN = Path(sys.executable).parent
"""The project's .venv/bin: weed, mlflow, prefect."""
HTTP_TIMEOUT_S = 3.0
"""How long a health check waits for a server's answer."""


class StackError(RuntimeError):
    """A component failed to start or answer; the message says which and shows its log tail."""


@dataclass(frozen=True)
class Component:
    """One long-running process of the stack: how to start it and how to know it is healthy."""

    name: str
    port: int | None
    argv: list[str]
    check: Callable[[StackSettings], str | None]
    url: str


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((host, port)) == 0


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
