"""Background processes of the project, started, awaited and stopped one way: the stack's servers
and worker (infra/ser_infra/) and a model server (flows/serving.py).

Each process leads a process group of its own (a new session), its output appended to a log
file; it is ready when its check passes (:func:`wait_ready`, e.g. :func:`http_check` of its health
address); stopping it signals the whole group (:func:`stop_process_group`), so the children it
started (uvicorn workers, a flow run's subprocess) go with it and nothing else is touched.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

STOP_GRACE_S = 15.0
"""How long a process group gets between SIGTERM and SIGKILL."""


class NotReadyError(RuntimeError):
    """The process exited, or its check did not pass in time; the message says which and why."""


def start_process_group(
    argv: Sequence[str], env: Mapping[str, str], log_file: Path, cwd: Path | None = None, header: str = ""
) -> subprocess.Popen:
    """Start ``argv`` as the leader of a new process group, stdin closed, stdout and stderr
    appended to ``log_file`` (after ``header``, when given)."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as out:
        if header:
            out.write(header.encode())
            out.flush()
        return subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def http_check(url: str, timeout_s: float = 3.0) -> str | None:
    """None when GET ``url`` answers 200, else the reason (refused, timed out, HTTP status)."""
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            status = response.status
    except (urllib.error.URLError, OSError) as exc:
        return f"GET {url}: {exc}"
    return None if status == 200 else f"GET {url}: HTTP {status}"


def wait_ready(
    check: Callable[[], str | None], exited: Callable[[], str | None], timeout_s: float, poll_s: float = 0.5
) -> None:
    """Poll ``check`` (None: ready, else the reason it is not) until it passes. Raises
    :class:`NotReadyError` with ``exited``'s reason as soon as that says the process is gone
    (it returns None while the process runs), or with the last reason after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    reason = "not checked"
    while True:
        gone = exited()
        if gone is not None:
            raise NotReadyError(gone)
        reason = check()
        if reason is None:
            return
        if time.monotonic() > deadline:
            raise NotReadyError(f"not ready after {timeout_s:.0f} s ({reason})")
        time.sleep(poll_s)


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def stop_process_group(
    pid: int, grace_s: float = STOP_GRACE_S, log: Callable[[str], None] | None = None
) -> None:
    """SIGTERM the process group led by ``pid``, wait up to ``grace_s``, then SIGKILL what is left
    of it (said through ``log``). The leader's descendants that left the group are stopped too."""
    import psutil  # here: only the processes that stop others pay for it

    try:
        leader = psutil.Process(pid)
        members = [leader, *leader.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    members += [p for p in psutil.process_iter() if _pgid(p.pid) == pid and p not in members]
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    _, alive = psutil.wait_procs(members, timeout=grace_s)
    if alive:
        if log is not None:
            log(f"pid {pid}: {len(alive)} process(es) ignored SIGTERM for {grace_s:.0f} s, sending SIGKILL")
        for proc in alive:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=5)
