"""The environment of the stack's processes (`stack_env`) and of a person's shell (`env_lines`,
what infra/env.sh prints): the client settings of ser_stack, telemetry off, and the settings each
side needs of its own.
"""

from __future__ import annotations

import os
import shlex
import tomllib
from collections.abc import Mapping
from pathlib import Path

from ser_infra.component import BIN
from ser_infra.postgres import database_env
from ser_stack.settings import REPO_ROOT, StackSettings

TELEMETRY_OFF = {
    "DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}
PREFECT_TOML = REPO_ROOT / "prefect.toml"


def stack_env(settings: StackSettings) -> dict[str, str]:
    """Environment for every stack process: the caller's, plus the client settings, telemetry off."""
    return {
        # SQLite waits this long for a lock before failing a request (Prefect's default: 10 s,
        # too short when training and tests load a small machine)
        "PREFECT_SERVER_DATABASE_TIMEOUT": "60",
        # concurrency-slot leases on disk under PREFECT_HOME, not in the server's memory: a slot held
        # by a training that died while the server restarted (infra/down, a crash) is released when
        # its lease expires, instead of staying taken for ever (Prefect's default storage forgets the
        # lease on restart but keeps the slot counted: PrefectHQ/prefect#17415, #20090)
        "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "prefect.server.concurrency.lease_storage.filesystem",
        # how every MLflow request of the flows rides out an outage of the tracking server (no retry
        # loop of our own on top): 7 retries, waits of 0, 4, 8, … 120 s (urllib3's backoff), about
        # 4 minutes in all; then the task fails and Prefect's task retries or a rerun resume
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "7",
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "2",
        **os.environ,
        **settings.client_env(),
        **database_env(settings),
        **TELEMETRY_OFF,
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        # The project's Prefect plugin (short deployment names) is for people's shells (infra/env.sh),
        # not for the stack: the servers, the worker and the flow runs it starts only use full names.
        # Left on (prefect.toml turns it on in the project folder, where the stack runs), Prefect's
        # subprocess that runs a crashed flow run's hooks (prefect/runner/_workspace_runtime_bootstrap.py)
        # first imports prefect inside its event loop, where plugin start-up cannot run, and logs
        # "Failed to initialize plugins: Already running asyncio in this thread" for every crash.
        "PREFECT_PLUGINS_ENABLED": "false",
    }


def plugin_env(prefect_toml: Path = PREFECT_TOML) -> dict[str, str]:
    """The ``[plugins]`` settings of the project's prefect.toml as Prefect environment variables,
    so a shell in any folder loads the project's Prefect plugin (short deployment names)."""
    plugins = tomllib.loads(prefect_toml.read_text()).get("plugins", {})
    env = {}
    if "enabled" in plugins:
        env["PREFECT_PLUGINS_ENABLED"] = str(bool(plugins["enabled"])).lower()
    if plugins.get("allow"):
        env["PREFECT_PLUGINS_ALLOW"] = ",".join(plugins["allow"])
    return env


def path_with_venv(path: str, bin_dir: Path = BIN) -> str:
    """`path` (a PATH value) with `bin_dir` first and nowhere else, so `prefect` and `ser` are the project's."""
    rest = [entry for entry in path.split(os.pathsep) if entry and Path(entry) != bin_dir]
    return os.pathsep.join([str(bin_dir), *rest])


def env_lines(settings: StackSettings, environ: Mapping[str, str] | None = None) -> list[str]:
    """``export`` lines for a shell: the client settings, telemetry off, the project's Prefect plugin
    on, and `.venv/bin` first on PATH (`environ` gives the PATH to extend; default: ours)."""
    environ = os.environ if environ is None else environ
    values = {
        **settings.client_env(),
        **TELEMETRY_OFF,
        **plugin_env(),
        "PATH": path_with_venv(environ.get("PATH", "")),
    }
    return [f"export {key}={shlex.quote(value)}" for key, value in values.items()]
