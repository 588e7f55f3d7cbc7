"""The processes the stack starts and what it keeps about them in its state folder.

Every process is started in its own session (process group); its pid and start time go to
`<state>/pids/<name>.json`, its output to `<state>/logs/<name>.log`, each start headed by
:data:`START_HEADER` and its command line. A pid file counts only while its process has the
recorded start time, so `stop_recorded` signals exactly the process groups the stack started and
never a process that reused a pid. Secrets in the folder are written readable by the owner only.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import time
from collections.abc import Mapping
from pathlib import Path

from ser_stack.processes import STOP_GRACE_S, start_process_group, stop_process_group

log = logging.getLogger("ser.infra")

START_HEADER = "\n=== "
"""Written by `start_process` before each start of a process into its log."""


def pid_dir(state_dir: Path) -> Path:
    return state_dir / "pids"


def log_path(state_dir: Path, name: str) -> Path:
    return state_dir / "logs" / f"{name}.log"


def process_start_time(pid: int) -> float | None:
    """Start time of `pid` (seconds since the epoch) from psutil, or None if no such process."""
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None


def start_process(state_dir: Path, name: str, argv: list[str], env: Mapping[str, str], cwd: Path) -> int:
    """Start `argv` as the leader of a new process group, output to its log; record pid + start time."""
    pid_dir(state_dir).mkdir(parents=True, exist_ok=True)
    header = f"{START_HEADER}{time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(argv)}\n"
    proc = start_process_group(argv, env, log_path(state_dir, name), cwd, header)
    record = {"pid": proc.pid, "create_time": process_start_time(proc.pid), "argv": argv}
    (pid_dir(state_dir) / f"{name}.json").write_text(json.dumps(record))
    return proc.pid


def recorded_pid(state_dir: Path, name: str) -> int | None:
    """The pid recorded for `name` if that very process (same start time) is still alive, else None."""
    import psutil

    path = pid_dir(state_dir) / f"{name}.json"
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    try:
        proc = psutil.Process(record["pid"])
        same = record["create_time"] is not None and abs(proc.create_time() - record["create_time"]) <= 1.0
        alive = proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return None
    return record["pid"] if same and alive else None


def recorded_names(state_dir: Path) -> list[str]:
    return sorted(path.stem for path in pid_dir(state_dir).glob("*.json"))


def stop_recorded(state_dir: Path, names: list[str], grace_s: float = STOP_GRACE_S) -> list[str]:
    """Stop the recorded process groups of `names` (in the given order), remove their pid files.

    Returns the names that were actually running.
    """
    stopped = []
    for name in names:
        pid = recorded_pid(state_dir, name)
        if pid is not None:
            began = time.monotonic()
            stop_process_group(pid, grace_s, log.warning)
            log.info("stopped %s (pid %d) in %.1f s", name, pid, time.monotonic() - began)
            stopped.append(name)
        (pid_dir(state_dir) / f"{name}.json").unlink(missing_ok=True)
    return stopped


def log_since_start(path: Path) -> str:
    """What the process logged into `path` since its latest start (the text after the last start header)."""
    if not path.exists():
        return ""
    text = path.read_text(errors="replace")
    return text[text.rfind(START_HEADER) + 1 :] if START_HEADER in text else text


def tail(path: Path, lines: int = 30) -> str:
    if not path.exists():
        return f"(no log at {path})"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path` readable by the owner only (0600), replacing any previous file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


def create_private_json(path: Path, content: dict) -> None:
    """Create `path` (it must not exist) readable by the owner only (0600), holding `content` as JSON:
    a secret generated once into the state folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(content, handle)
