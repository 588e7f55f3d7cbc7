"""Serving the SER pyfunc on a network: what a served model accepts, its limits, its error replies.

`mlflow models serve` runs MLflow's scoring server (uvicorn, `mlflow.pyfunc.scoring_server`),
which loads the pyfunc and hands it every request's rows. Three things differ from local batch
use (`mlflow.pyfunc.load_model`, `ser predict`):

- **Paths.** A served model never opens a path a client names (`{"audio": "/etc/passwd"}`):
  paths are refused unless the operator sets `SER_SERVE_ALLOWED_ROOT`, and then only files
  inside that folder (after resolving links) are read. Clients send waveforms or file bytes.
- **Limits.** Rows per request, seconds of audio per row and request bytes are bounded (4xx
  naming the limit); the operator sets them with `SER_SERVE_MAX_ROWS`, `SER_SERVE_MAX_SECONDS`,
  `SER_SERVE_MAX_REQUEST_BYTES`. A request with the ``segments`` option (long recordings, an
  emotion per segment) is bounded by the seconds of audio of all its rows together instead,
  `SER_SERVE_MAX_SEGMENTS_SECONDS` (default 10 minutes).
- **Replies.** MLflow's scoring server puts the input's repr and, for errors other than
  `MlflowException`, a stack trace with server paths into its error JSON. `guard_scoring_server`
  wraps the server's `invocations` function so that a reply carries only the error code and a
  message naming the bad field; the details go to the server log.

The serving context is recognised without the operator's help, so that the safe behaviour is
the default: MLflow's scoring server sets `__pyfunc_model_path__` in its worker's environment
before the model is loaded (which is when the guard is installed), and
`_MLFLOW_IS_IN_SERVING_ENVIRONMENT` once its app exists (also under `mlflow models predict`);
any other server that wraps the pyfunc sets `SER_SERVING=1`. A process with none of these
signals is local batch use, where a path names the caller's own file.

`serve_command` is the documented command line and `running_model_server` runs it until it
answers (the e2e test and benchmarks/serve_load.py use both). docs/SERVING.md is the user's view.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from mlflow.environment_variables import _MLFLOW_IS_IN_SERVING_ENVIRONMENT
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import scoring_server

from ser_stack.process_settings import ProcessSettings
from ser_stack.processes import NotReadyError, http_check, start_process_group, stop_process_group, wait_ready

_logger = logging.getLogger(__name__)

SERVING_FLAG = ProcessSettings.variable("serving")
"""Set to 1 by a server other than MLflow's that wraps the pyfunc: turns on the serving policy."""
MAX_SECONDS = ProcessSettings.variable("serve_max_seconds")
MAX_ROWS = ProcessSettings.variable("serve_max_rows")
MAX_REQUEST_BYTES = ProcessSettings.variable("serve_max_request_bytes")
MAX_SEGMENTS_SECONDS = ProcessSettings.variable("serve_max_segments_seconds")
_DEFAULTS = ProcessSettings.model_fields
"""The fields whose defaults are a policy's limits when their variables are unset (docs/ENVIRONMENT.md)."""


class ModelInputError(MlflowException):
    """A request's input is unusable: the message names the row and field. `status` is the HTTP
    status of the reply (400 bad value, 413 over a limit); `reply` the message without the input
    repr MLflow's scoring server prepends."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)
        self.reply = message
        self.status = status


@dataclass(frozen=True)
class ServingPolicy:
    """What a served model accepts. max_seconds: audio per row; max_rows: rows per request;
    max_request_bytes: body of one request (also the largest file read under allowed_root);
    allowed_root: folder whose files clients may name by path (None: no paths);
    max_segments_seconds: audio of all rows together in a request with the ``segments`` option
    (which replaces max_seconds there: 10 minutes of 16 kHz FLAC is about 17 MB in base64, under
    the default body limit, and about 6 s of work for the fbank model on 2 cores)."""

    max_seconds: float = _DEFAULTS["serve_max_seconds"].default
    max_rows: int = _DEFAULTS["serve_max_rows"].default
    max_request_bytes: int = _DEFAULTS["serve_max_request_bytes"].default
    allowed_root: Path | None = None
    max_segments_seconds: float = _DEFAULTS["serve_max_segments_seconds"].default

    def __post_init__(self) -> None:
        limits = (
            ("max_seconds", self.max_seconds),
            ("max_rows", self.max_rows),
            ("max_request_bytes", self.max_request_bytes),
            ("max_segments_seconds", self.max_segments_seconds),
        )
        for name, value in limits:
            if not value > 0:
                raise ValueError(f"ServingPolicy.{name}: got {value!r}, expected a positive number")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ServingPolicy:
        """The policy from the SER_SERVE_* variables of ``env`` (default: this process's; unset: the
        defaults); a bad value raises ValueError naming the variable, so the server refuses to
        start rather than run unbounded."""
        knobs = ProcessSettings.from_env(env)
        return cls(
            max_seconds=knobs.serve_max_seconds,
            max_rows=knobs.serve_max_rows,
            max_request_bytes=knobs.serve_max_request_bytes,
            allowed_root=knobs.serve_allowed_root,
            max_segments_seconds=knobs.serve_max_segments_seconds,
        )

    def allowed_file(self, path: str, where: str) -> Path:
        """The resolved file a client named, if this policy lets it be read; else ModelInputError
        (the message never names the server's folder)."""
        if self.allowed_root is None:
            raise ModelInputError(
                f"{where}: file paths are not accepted by the served model; send the waveform with "
                "'sample_rate', or the file's bytes base64-encoded in 'audio_base64'"
            )
        try:
            resolved = Path(os.path.realpath(self.allowed_root / path))
            readable = resolved.is_relative_to(self.allowed_root) and resolved.is_file()
            size = resolved.stat().st_size if readable else 0
        except (OSError, ValueError):  # a name too long, a NUL byte
            readable = False
        if not readable:
            raise ModelInputError(f"{where}: no such file in the folder this server reads from")
        if size > self.max_request_bytes:
            raise ModelInputError(
                f"{where}: the file is larger than the limit of {self.max_request_bytes} bytes ({MAX_REQUEST_BYTES})",
                413,
            )
        return resolved


def in_scoring_server() -> bool:
    """True in a process of MLflow's scoring server (`mlflow models serve`, `build-docker` images),
    where the model is loaded before the app exists."""
    return scoring_server._SERVER_MODEL_PATH in os.environ


def serving_process() -> bool:
    """True inside a model server: MLflow's scoring server (see the module docstring) or one
    that sets SER_SERVING=1."""
    return (
        in_scoring_server()
        or bool(_MLFLOW_IS_IN_SERVING_ENVIRONMENT.get())
        or ProcessSettings.from_env().serving
    )


MAX_MESSAGE = 1000
"""Characters of an error message kept in a reply or a log line (MLflow's JSON errors echo the
whole input)."""


def _shortened(message: str) -> str:
    return message if len(message) <= MAX_MESSAGE else message[:MAX_MESSAGE] + " [...]"


def _reply(status: int, error_code: str, message: str) -> scoring_server.InvocationsResponse:
    body = json.dumps({"error_code": error_code, "message": _shortened(message)})
    return scoring_server.InvocationsResponse(response=body, status=status, mimetype="application/json")


def guard_scoring_server(policy: ServingPolicy) -> None:
    """Wrap the scoring server's `invocations` (which its /invocations endpoint looks up at each
    request) so that a body over `policy.max_request_bytes` is refused before it is parsed
    (413), and every error reply is `{"error_code", "message"}` with no stack trace, no input
    repr and no server path. Called again, it replaces its earlier wrapper (new policy)."""
    original = getattr(scoring_server.invocations, "ser_unguarded", scoring_server.invocations)

    @functools.wraps(original)
    def guarded(data, content_type, model, input_schema):
        if len(data) > policy.max_request_bytes:
            return _reply(
                413,
                "INVALID_PARAMETER_VALUE",
                f"the request body holds {len(data)} bytes, more than the limit of {policy.max_request_bytes} bytes ({MAX_REQUEST_BYTES})",
            )
        if not content_type:
            return _reply(415, "BAD_REQUEST", "missing Content-Type header; expected application/json")
        try:
            return original(data, content_type, model, input_schema)
        except ModelInputError as err:
            return _reply(err.status, err.error_code, err.reply)
        except MlflowException as err:
            _logger.warning("refused a request: %s", _shortened(err.message))
            return _reply(err.get_http_status_code(), err.error_code, err.message)
        except Exception:
            _logger.exception("scoring a request failed")
            return _reply(
                500, "INTERNAL_ERROR", "the model failed on this request; the server log has the details"
            )

    guarded.ser_unguarded = original
    scoring_server.invocations = guarded


def serve_command(model_uri: str, host: str = "127.0.0.1", port: int = 5000) -> list[str]:
    """The documented serving command: `mlflow models serve` in the project's environment (no
    new virtualenv), e.g. for ``models:/ser-ravdess@champion``."""
    mlflow_cli = Path(sys.executable).parent / "mlflow"
    return [
        str(mlflow_cli),
        "models",
        "serve",
        "-m",
        model_uri,
        "--env-manager",
        "local",
        "--host",
        host,
        "--port",
        str(port),
    ]


@contextlib.contextmanager
def running_model_server(
    model_uri: str,
    port: int,
    env: Mapping[str, str],
    log_path: Path,
    host: str = "127.0.0.1",
    start_timeout_s: float = 300.0,
) -> Iterator[tuple[str, subprocess.Popen]]:
    """Run `serve_command` (its own process group, output to `log_path`) until /ping answers;
    yield (base URL, process); stop the whole group afterwards. The venv's bin folder goes first
    on PATH, as `eval "$(infra/env.sh)"` does, because MLflow starts `uvicorn` by name."""
    env = {**env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"}
    url = f"http://{host}:{port}"
    process = start_process_group(serve_command(model_uri, host, port), env, log_path)

    def exited() -> str | None:
        code = process.poll()
        return None if code is None else f"mlflow models serve exited with {code} before answering"

    try:
        try:
            wait_ready(lambda: http_check(f"{url}/ping", timeout_s=5), exited, start_timeout_s, poll_s=1.0)
        except NotReadyError as err:
            raise RuntimeError(f"mlflow models serve at {url}: {err}; see {log_path}") from None
        yield url, process
    finally:
        stop_process_group(process.pid, grace_s=30)
        process.wait()
