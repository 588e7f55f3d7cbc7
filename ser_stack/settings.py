"""Every environment variable of the project, in two pydantic-settings models that are also their
documentation: :class:`StackSettings` (here), where the stack is: what every process must agree
on to reach S3, MLflow, Prefect and the database (infra/ starts the local stack from the same
values); and `ser_stack.process_settings.ProcessSettings`, the knobs of one process each.

A field is one variable: its name (the field's alias), type, default and meaning (its
description; ser_stack/environment.py). An empty variable is unset. A bad value is a
`SettingsError` whose one line names the variable, the value and what is expected
(``SER_S3_PORT='x': expected a TCP port number (1-65535)``); commands check every variable before
they start (:func:`exit_if_bad_environment`). Secrets stay out of ``repr``, logs and those messages.

docs/ENVIRONMENT.md is the table of every variable, generated from the models by
``python -m ser_stack.settings --markdown > docs/ENVIRONMENT.md`` (a test keeps it in step);
``python -m ser_stack.settings`` checks the variables of the shell it runs in.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Self
from urllib.parse import quote

from pydantic import AliasChoices, ValidationInfo, field_validator, model_validator

from ser_stack.environment import (
    EnvironmentSettings,
    SettingsError,
    env_field,
    markdown_table,
    one_of,
    parsed,
)
from ser_stack.process_settings import ProcessSettings
from ser_stack.s3 import s3_client

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_RAVDESS = REPO_ROOT.parent / "shared" / "data" / "ravdess"
"""Where RAVDESS lies beside the repository (16 kHz FLAC): the tests', the benchmarks'
and the flows' default RAVDESS root."""
CREDENTIALS_FILE = "s3-credentials.json"
PG_CREDENTIALS_FILE = "postgres-credentials.json"
DATABASES = ("sqlite", "postgres")
"""Values of SER_DB."""
PG_USER = "ser"
"""The PostgreSQL role the stack's servers and clients connect as (the server's superuser)."""
DEFAULT_REGION = "us-east-1"
DERIVED_CLIENT_VARIABLES = (
    "MLFLOW_TRACKING_URI",
    "PREFECT_API_URL",
    "PREFECT_HOME",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "MLFLOW_S3_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "SER_TUNE_STORAGE",
    "SER_PG_PASSWORD",
)
"""What :meth:`StackSettings.client_env` derives from one stack (addresses, credentials, storage):
a second stack started from a shell of the first (a test's, a benchmark's) drops them and derives its own."""


def read_credentials_file(state_dir: Path) -> tuple[str, str] | None:
    """(access key, secret key) stored by `infra/up` in the state folder, or None if absent."""
    path = state_dir / CREDENTIALS_FILE
    if not path.exists():
        return None
    try:
        stored = json.loads(path.read_text())
        return stored["access_key_id"], stored["secret_access_key"]
    except json.JSONDecodeError as err:
        problem = f"not JSON ({err})"
    except KeyError as missing:
        problem = f"missing key {missing}"
    except TypeError:
        problem = f"holds a {type(stored).__name__}"
    raise ValueError(f"{path}: {problem}; expected a JSON object with access_key_id and secret_access_key")


def read_pg_password(state_dir: Path) -> str | None:
    """The PostgreSQL password stored by `infra/up` in the state folder, or None if absent."""
    path = state_dir / PG_CREDENTIALS_FILE
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())["password"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: {err!r}; expected a JSON object with a password") from None


def gateway_url(host: str, s3_port: int) -> str:
    """The S3 endpoint of the stack's own SeaweedFS gateway."""
    return f"http://{host}:{s3_port}"


def postgres_url(host: str, port: int, password: str | None, name: str, driver: str = "") -> str:
    """SQLAlchemy URL of database `name` on a PostgreSQL server, as user :data:`PG_USER`."""
    secret = f":{quote(password, safe='')}" if password else ""
    scheme = f"postgresql+{driver}" if driver else "postgresql"
    return f"{scheme}://{PG_USER}{secret}@{host}:{port}/{name}"


def _stored_credential(which: int) -> Callable[[dict[str, Any]], str | None]:
    return lambda stack: (read_credentials_file(stack["state_dir"]) or (None, None))[which]


def _default_tune_storage(stack: dict[str, Any]) -> str:
    if stack["db"] == "postgres":
        return postgres_url(stack["host"], stack["pg_port"], stack["pg_password"], "optuna")
    return f"sqlite:///{stack['state_dir'] / 'optuna.db'}"


PORTS = (
    "s3_port",
    "weed_master_port",
    "weed_volume_port",
    "weed_filer_port",
    "weed_admin_port",
    "mlflow_port",
    "prefect_port",
    "pg_port",
)
"""The fields that are TCP ports of the stack's servers (pg_port only with SER_DB=postgres)."""


def _bucket(name: str) -> str:
    if not (3 <= len(name) <= 63) or name != name.lower() or "_" in name:
        raise ValueError("expected an S3 bucket name (3-63 lowercase letters, digits, '-', '.')")
    return name


Bucket = Annotated[str, parsed(_bucket)]


class StackSettings(EnvironmentSettings):
    """Where the SER stack is (S3, MLflow, Prefect, the database), as every process sees it: the
    same variables drive `infra/` (which starts the local stack) and every client (flows, the CLI,
    tests), so both sides agree on hosts, ports, buckets and the state folder.
    MLFLOW_TRACKING_URI, PREFECT_API_URL and AWS_ENDPOINT_URL_S3 point at services elsewhere."""

    host: str = env_field(
        "SER_HOST", "127.0.0.1", "interface every local server binds and clients connect to"
    )
    s3_port: int = env_field("SER_S3_PORT", 8333, "SeaweedFS S3 API")
    weed_master_port: int = env_field("SER_WEED_MASTER_PORT", 9333, "SeaweedFS master (gRPC on this + 10000)")
    weed_volume_port: int = env_field("SER_WEED_VOLUME_PORT", 8080, "SeaweedFS volume server (gRPC + 10000)")
    weed_filer_port: int = env_field("SER_WEED_FILER_PORT", 8888, "SeaweedFS filer (gRPC + 10000)")
    weed_admin_port: int = env_field("SER_WEED_ADMIN_PORT", 23646, "SeaweedFS admin UI")
    mlflow_port: int = env_field("SER_MLFLOW_PORT", 5000, "MLflow tracking server")
    prefect_port: int = env_field("SER_PREFECT_PORT", 4200, "Prefect server")
    state_dir: Annotated[Path, parsed(lambda text: Path(text).expanduser().resolve())] = env_field(
        "SER_STATE_DIR",
        meaning="logs, pid files, SQLite databases or PostgreSQL's data folder, S3 data, generated credentials",
        default_factory=lambda: REPO_ROOT / ".ser-state",
        shown="<repo>/.ser-state",
    )
    data_bucket: Bucket = env_field(
        "SER_DATA_BUCKET", "ser-data", "S3 bucket of manifests, tables and features"
    )
    mlflow_bucket: Bucket = env_field("SER_MLFLOW_BUCKET", "ser-mlflow", "S3 bucket of MLflow's artifacts")
    work_pool: str = env_field("SER_WORK_POOL", "ser-process", "Prefect work pool the worker polls")
    db: Annotated[str, parsed(one_of(*DATABASES, lower=True))] = env_field(
        "SER_DB",
        DATABASES[0],
        "the database of Prefect, MLflow and Optuna: `sqlite` (files in the state folder) or "
        "`postgres` (one local PostgreSQL server)",
    )
    pg_port: int = env_field("SER_PG_PORT", 5433, "that PostgreSQL server (with SER_DB=postgres)")
    tracking_uri: str = env_field(
        "MLFLOW_TRACKING_URI",
        meaning="the MLflow tracking server",
        default_factory=lambda stack: f"http://{stack['host']}:{stack['mlflow_port']}",
        shown="http://<SER_HOST>:<SER_MLFLOW_PORT>",
    )
    prefect_api_url: str = env_field(
        "PREFECT_API_URL",
        meaning="the Prefect API",
        default_factory=lambda stack: f"http://{stack['host']}:{stack['prefect_port']}/api",
        shown="http://<SER_HOST>:<SER_PREFECT_PORT>/api",
    )
    s3_endpoint: str = env_field(
        AliasChoices("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
        meaning="the S3 endpoint",
        default_factory=lambda stack: gateway_url(stack["host"], stack["s3_port"]),
        shown="http://<SER_HOST>:<SER_S3_PORT> (the stack's SeaweedFS)",
    )
    region: str = env_field("AWS_DEFAULT_REGION", DEFAULT_REGION, "the S3 region")
    access_key_id: str | None = env_field(
        "AWS_ACCESS_KEY_ID",
        meaning="S3 access key (with AWS_SECRET_ACCESS_KEY; either unset: both from the file)",
        default_factory=_stored_credential(0),
        shown=f"generated once into <state>/{CREDENTIALS_FILE}",
        secret=True,
    )
    secret_access_key: str | None = env_field(
        "AWS_SECRET_ACCESS_KEY",
        meaning="S3 secret key",
        default_factory=_stored_credential(1),
        shown=f"generated once into <state>/{CREDENTIALS_FILE}",
        secret=True,
    )
    pg_password: str | None = env_field(
        "SER_PG_PASSWORD",
        meaning=f"password of the PostgreSQL user `{PG_USER}`",
        default_factory=lambda s: read_pg_password(s["state_dir"]) if s["db"] == "postgres" else None,
        shown=f"generated once into <state>/{PG_CREDENTIALS_FILE}",
        secret=True,
    )
    tune_storage: str = env_field(
        "SER_TUNE_STORAGE",
        meaning="where tuning studies live, an Optuna RDB URL",
        default_factory=_default_tune_storage,
        shown="sqlite:///<state>/optuna.db; the database optuna of the stack's PostgreSQL with SER_DB=postgres",
        secret=True,
    )

    @model_validator(mode="before")
    @classmethod
    def _credentials_as_a_pair(cls, given: dict[str, Any]) -> dict[str, Any]:
        """Keys from the environment only when both are there; else both from the state folder."""
        pair = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
        if all(given.get(name) for name in pair):
            return given
        return {name: value for name, value in given.items() if name not in pair}

    @field_validator(*PORTS, mode="before")
    @classmethod
    def _port(cls, raw: Any, info: ValidationInfo) -> int:
        variable = cls.variable(info.field_name)
        try:
            port = int(raw)
        except ValueError:
            raise ValueError(f"{variable}={raw!r}: expected a TCP port number (1-65535)") from None
        if not 1 <= port <= 65535:
            raise ValueError(f"{variable}={port}: expected a TCP port number (1-65535)")
        return port

    @model_validator(mode="after")
    def _ports_differ(self) -> Self:
        by_port: dict[int, list[str]] = {}
        for name in PORTS if self.db == "postgres" else PORTS[:-1]:
            by_port.setdefault(getattr(self, name), []).append(self.variable(name))
        clashes = [names for names in by_port.values() if len(names) > 1]
        if clashes:
            raise ValueError(f"ports must differ, but these share one: {clashes}")
        return self

    @property
    def own_s3(self) -> bool:
        """Whether ``s3_endpoint`` is the stack's own SeaweedFS gateway (the default), not an S3
        elsewhere (``AWS_ENDPOINT_URL_S3``)."""
        return self.s3_endpoint.rstrip("/") == gateway_url(self.host, self.s3_port)

    @property
    def prefect_home(self) -> Path:
        return self.state_dir / "prefect"

    def database_url(self, name: str, driver: str = "") -> str:
        """SQLAlchemy URL of database `name` on the stack's PostgreSQL (`driver`: e.g. ``asyncpg``;
        default psycopg2), with the password."""
        return postgres_url(self.host, self.pg_port, self.pg_password, name, driver)

    def s3_client(self, **timeouts: float):
        """An S3 client for this stack's endpoint and credentials (`ser_stack.s3.s3_client`)."""
        return s3_client(
            self.s3_endpoint, self.region, self.access_key_id, self.secret_access_key, **timeouts
        )

    def client_env(self) -> dict[str, str]:
        """Environment variables a client process needs to reach this stack (includes the secrets):
        every field's, the PostgreSQL ones only with SER_DB=postgres, the S3 keys when both are set."""
        when_used = ("pg_port", "pg_password", "access_key_id", "secret_access_key")
        env = {self.variable(name): str(value) for name, value in self if name not in when_used}
        env |= {
            "PREFECT_HOME": str(self.prefect_home),
            "AWS_ENDPOINT_URL": self.s3_endpoint,
            "MLFLOW_S3_ENDPOINT_URL": self.s3_endpoint,
        }
        if self.db == "postgres":
            env["SER_PG_PORT"] = str(self.pg_port)
            if self.pg_password:
                env["SER_PG_PASSWORD"] = self.pg_password
        if self.access_key_id and self.secret_access_key:
            env["AWS_ACCESS_KEY_ID"] = self.access_key_id
            env["AWS_SECRET_ACCESS_KEY"] = self.secret_access_key
        return env


MODELS = (StackSettings, ProcessSettings)


def check_environment(env: Mapping[str, str] | None = None) -> None:
    """Every variable of both models checked at once: SettingsError naming each bad one (and an
    unreadable credentials file in the state folder)."""
    problems = []
    for model in MODELS:
        try:
            model.from_env(env)
        except ValueError as err:  # a SettingsError, or an unreadable credentials file
            problems.append(str(err))
    if problems:
        raise SettingsError("; ".join(problems))


def exit_if_bad_environment(program: str) -> None:
    """At a command's start: a bad variable ends the process with status 2 and one line on stderr
    (``<program>: SER_HEAP='x': expected one of bounded, glibc``)."""
    try:
        check_environment()
    except SettingsError as err:
        print(f"{program}: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def markdown() -> str:
    """docs/ENVIRONMENT.md: a table of every variable of each model."""
    lines = [
        "# Environment variables",
        "",
        "Generated from the settings models (`ser_stack/settings.py`, `ser_stack/process_settings.py`) by",
        "`python -m ser_stack.settings --markdown > docs/ENVIRONMENT.md`: edit the models, not this file.",
        "An empty variable is unset; `python -m ser_stack.settings` checks the variables of a shell.",
    ]
    for model in MODELS:
        lines += markdown_table(model)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ser_stack.settings",
        description="check this shell's environment variables, or print the table of all of them",
    )
    parser.add_argument("--markdown", action="store_true", help="print docs/ENVIRONMENT.md")
    args = parser.parse_args(argv)
    if args.markdown:
        print(markdown(), end="")
        return 0
    exit_if_bad_environment(parser.prog)
    print(f"{parser.prog}: every variable of {', '.join(m.__name__ for m in MODELS)} is valid")
    return 0


if __name__ == "__main__":
    sys.exit(main())
