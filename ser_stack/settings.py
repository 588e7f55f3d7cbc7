"""Where the stack is: one frozen settings object read from the environment, and the one S3
client factory (:func:`s3_client`) of the project.

The settings object holds what every process must agree on to reach the stack (the table
below). The other ``SER_*`` variables are knobs of one process each, read by the one function
that uses them, beside its use (tests/infra/test_infra_settings.py checks that this list is
complete):

| variable | read by | meaning |
|---|---|---|
| SER_ROOT_<CORPUS> | flows/roots.py `configured_roots` | a corpus root, in the worker's environment |
| SER_AUDIO_CACHE_DIR / SER_AUDIO_CACHE_BYTES | data_contracts/staging.py `cache_from_env` | where a worker stages audio read from S3, and the cache's limit |
| SER_FEATURE_CACHE_DIR | flows/feature_store.py `local_feature_cache_dir` | the machine's frozen-backbone feature cache |
| SER_NPROC_PER_NODE | ser_model/launch.py `nproc_per_node` | worker processes per fold |
| SER_HEAP | ser_model/allocator.py `heap_policy` | a training process's C heap: ``bounded`` (default; bounded RSS, more system CPU) or ``glibc`` |
| SER_MEMORY_CACHE_BYTES | ser_model/data.py `memory_cache_bytes` | how much decoded audio (or cached backbone states) a fold worker keeps in memory |
| SER_FOLD_RUNS / SER_FOLD_JOB_VARIABLES | flows/fold_runs.py | how the train flow starts fold runs, and their job variables |
| SER_FOLD_CONCURRENCY / SER_RETRAIN_CRON | flows/deploy.py | folds at once on the ``folds`` queue; the retrain schedule |
| SER_SERVING / SER_SERVE_* | flows/serving.py | a served model's request limits and allowed file root |
| SER_UP_TIMEOUT / SER_MLFLOW_WORKERS | infra/stack.py | how long ``infra/up`` waits for the services; the MLflow server's worker processes (default 1) |
| SER_DEMO_PRESET | infra/demo | the demo's training recipe |
| SER_REQUIRE_DATA / SER_REQUIRE_STACK / SER_SKIP_BROWSER / SER_PYTHON | infra/test, tests/conftest.py | what a test session demands, and its interpreter |
| SER_SKIP_POSTGRES / SER_PG_BIN | infra/setup, infra/stack.py | skip installing Debian's PostgreSQL; the folder of its server binaries |

Read into the settings object:

The same environment variables drive `infra/` (which starts the local stack) and every client
(flows, the CLI, tests), so both sides always agree on hosts, ports, buckets and the state folder.

| variable | default | meaning |
|---|---|---|
| SER_HOST | 127.0.0.1 | interface every local server binds and clients connect to |
| SER_S3_PORT | 8333 | SeaweedFS S3 API |
| SER_WEED_MASTER_PORT / SER_WEED_VOLUME_PORT / SER_WEED_FILER_PORT / SER_WEED_ADMIN_PORT | 9333 / 8080 / 8888 / 23646 | SeaweedFS internals (gRPC on each + 10000) |
| SER_MLFLOW_PORT | 5000 | MLflow tracking server |
| SER_PREFECT_PORT | 4200 | Prefect server |
| SER_DB | sqlite | the database of Prefect, MLflow and Optuna: ``sqlite`` (files in the state folder) or ``postgres`` (one local PostgreSQL server) |
| SER_PG_PORT | 5433 | that PostgreSQL server (with SER_DB=postgres) |
| SER_PG_PASSWORD | generated once into <state>/postgres-credentials.json | password of its user ``ser`` |
| SER_STATE_DIR | <repo>/.ser-state | logs, pid files, SQLite databases or PostgreSQL's data folder, S3 data, generated credentials |
| SER_DATA_BUCKET / SER_MLFLOW_BUCKET | ser-data / ser-mlflow | S3 buckets |
| SER_WORK_POOL | ser-process | Prefect work pool the worker polls |
| SER_TUNE_STORAGE | sqlite:///<state>/optuna.db | where tuning studies live (an Optuna RDB URL) |
| MLFLOW_TRACKING_URI, PREFECT_API_URL, AWS_ENDPOINT_URL_S3 | derived | set them to point at remote services instead |
| AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY | generated once into <state>/s3-credentials.json | S3 credentials |

Secrets never appear in `repr`, logs or `client_env` previews: they are held in fields with
`repr=False`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_RAVDESS = REPO_ROOT.parent / "shared" / "data" / "ravdess"
"""Where RAVDESS lies beside the repository (16 kHz FLAC): the tests', the benchmarks'
and the flows' default RAVDESS root."""
CREDENTIALS_FILE = "s3-credentials.json"
PG_CREDENTIALS_FILE = "postgres-credentials.json"
DATABASES = ("sqlite", "postgres")
"""Values of SER_DB."""
DEFAULT_DB = "sqlite"
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


def _port(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, str(default))
    try:
        port = int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r}: expected a TCP port number (1-65535)") from None
    if not 1 <= port <= 65535:
        raise ValueError(f"{name}={port}: expected a TCP port number (1-65535)")
    return port


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


@dataclass(frozen=True)
class StackSettings:
    """Addresses and names of the SER stack (S3, MLflow, Prefect) as a client sees them."""

    host: str
    s3_port: int
    weed_master_port: int
    weed_volume_port: int
    weed_filer_port: int
    weed_admin_port: int
    mlflow_port: int
    prefect_port: int
    state_dir: Path
    data_bucket: str
    mlflow_bucket: str
    work_pool: str
    tracking_uri: str
    prefect_api_url: str
    s3_endpoint: str
    region: str = DEFAULT_REGION
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    tune_storage: str = field(default="", repr=False)
    """Where tuning studies live, an Optuna RDB URL (``SER_TUNE_STORAGE``; default a SQLite file in the
    state folder, or the database ``optuna`` of the stack's PostgreSQL with SER_DB=postgres)."""
    db: str = DEFAULT_DB
    """The stack's database (``SER_DB``): ``sqlite`` or ``postgres``."""
    pg_port: int = 5433
    pg_password: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        ports = {
            "SER_S3_PORT": self.s3_port,
            "SER_WEED_MASTER_PORT": self.weed_master_port,
            "SER_WEED_VOLUME_PORT": self.weed_volume_port,
            "SER_WEED_FILER_PORT": self.weed_filer_port,
            "SER_WEED_ADMIN_PORT": self.weed_admin_port,
            "SER_MLFLOW_PORT": self.mlflow_port,
            "SER_PREFECT_PORT": self.prefect_port,
        }
        if self.db == "postgres":
            ports["SER_PG_PORT"] = self.pg_port
        if self.db not in DATABASES:
            raise ValueError(f"SER_DB={self.db!r}: expected one of {', '.join(DATABASES)}")
        by_port: dict[int, list[str]] = {}
        for name, port in ports.items():
            by_port.setdefault(port, []).append(name)
        clashes = [names for names in by_port.values() if len(names) > 1]
        if clashes:
            raise ValueError(f"ports must differ, but these share one: {clashes}")
        for name, bucket in (
            ("SER_DATA_BUCKET", self.data_bucket),
            ("SER_MLFLOW_BUCKET", self.mlflow_bucket),
        ):
            if not (3 <= len(bucket) <= 63) or bucket != bucket.lower() or "_" in bucket:
                raise ValueError(
                    f"{name}={bucket!r}: expected an S3 bucket name (3-63 lowercase letters, digits, '-', '.')"
                )
        if not self.state_dir.is_absolute():
            raise ValueError(f"state_dir={self.state_dir}: expected an absolute path")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> StackSettings:
        """Build the settings from `env` (default: `os.environ`), falling back to the local defaults."""
        env = os.environ if env is None else env
        host = env.get("SER_HOST", "127.0.0.1")
        state_dir = Path(env.get("SER_STATE_DIR", REPO_ROOT / ".ser-state")).expanduser().resolve()
        s3_port = _port(env, "SER_S3_PORT", 8333)
        mlflow_port = _port(env, "SER_MLFLOW_PORT", 5000)
        prefect_port = _port(env, "SER_PREFECT_PORT", 4200)
        access_key_id = env.get("AWS_ACCESS_KEY_ID")
        secret_access_key = env.get("AWS_SECRET_ACCESS_KEY")
        if not (access_key_id and secret_access_key):
            access_key_id, secret_access_key = read_credentials_file(state_dir) or (None, None)
        db = env.get("SER_DB", DEFAULT_DB).strip().lower()
        pg_port = _port(env, "SER_PG_PORT", 5433)
        pg_password = env.get("SER_PG_PASSWORD") or (
            read_pg_password(state_dir) if db == "postgres" else None
        )
        if db == "postgres":
            default_tune = postgres_url(host, pg_port, pg_password, "optuna")
        else:
            default_tune = f"sqlite:///{state_dir / 'optuna.db'}"
        return cls(
            host=host,
            s3_port=s3_port,
            weed_master_port=_port(env, "SER_WEED_MASTER_PORT", 9333),
            weed_volume_port=_port(env, "SER_WEED_VOLUME_PORT", 8080),
            weed_filer_port=_port(env, "SER_WEED_FILER_PORT", 8888),
            weed_admin_port=_port(env, "SER_WEED_ADMIN_PORT", 23646),
            mlflow_port=mlflow_port,
            prefect_port=prefect_port,
            state_dir=state_dir,
            data_bucket=env.get("SER_DATA_BUCKET", "ser-data"),
            mlflow_bucket=env.get("SER_MLFLOW_BUCKET", "ser-mlflow"),
            work_pool=env.get("SER_WORK_POOL", "ser-process"),
            tracking_uri=env.get("MLFLOW_TRACKING_URI", f"http://{host}:{mlflow_port}"),
            prefect_api_url=env.get("PREFECT_API_URL", f"http://{host}:{prefect_port}/api"),
            s3_endpoint=env.get(
                "AWS_ENDPOINT_URL_S3", env.get("AWS_ENDPOINT_URL", gateway_url(host, s3_port))
            ),
            region=env.get("AWS_DEFAULT_REGION", DEFAULT_REGION),
            access_key_id=access_key_id,
            secret_access_key=secret_access_key,
            tune_storage=env.get("SER_TUNE_STORAGE") or default_tune,
            db=db,
            pg_port=pg_port,
            pg_password=pg_password,
        )

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
        """An S3 client for this stack's endpoint and credentials (:func:`s3_client`)."""
        return s3_client(
            self.s3_endpoint, self.region, self.access_key_id, self.secret_access_key, **timeouts
        )

    def client_env(self) -> dict[str, str]:
        """Environment variables a client process needs to reach this stack (includes the secrets)."""
        env = {
            "SER_HOST": self.host,
            "SER_S3_PORT": str(self.s3_port),
            "SER_WEED_MASTER_PORT": str(self.weed_master_port),
            "SER_WEED_VOLUME_PORT": str(self.weed_volume_port),
            "SER_WEED_FILER_PORT": str(self.weed_filer_port),
            "SER_WEED_ADMIN_PORT": str(self.weed_admin_port),
            "SER_MLFLOW_PORT": str(self.mlflow_port),
            "SER_PREFECT_PORT": str(self.prefect_port),
            "SER_STATE_DIR": str(self.state_dir),
            "SER_DATA_BUCKET": self.data_bucket,
            "SER_MLFLOW_BUCKET": self.mlflow_bucket,
            "SER_WORK_POOL": self.work_pool,
            "MLFLOW_TRACKING_URI": self.tracking_uri,
            "PREFECT_API_URL": self.prefect_api_url,
            "PREFECT_HOME": str(self.prefect_home),
            "AWS_ENDPOINT_URL_S3": self.s3_endpoint,
            "AWS_ENDPOINT_URL": self.s3_endpoint,
            "MLFLOW_S3_ENDPOINT_URL": self.s3_endpoint,
            "AWS_DEFAULT_REGION": self.region,
        }
        if self.tune_storage:
            env["SER_TUNE_STORAGE"] = self.tune_storage
        env["SER_DB"] = self.db
        if self.db == "postgres":
            env["SER_PG_PORT"] = str(self.pg_port)
            if self.pg_password:
                env["SER_PG_PASSWORD"] = self.pg_password
        if self.access_key_id and self.secret_access_key:
            env["AWS_ACCESS_KEY_ID"] = self.access_key_id
            env["AWS_SECRET_ACCESS_KEY"] = self.secret_access_key
        return env


def postgres_url(host: str, port: int, password: str | None, name: str, driver: str = "") -> str:
    """SQLAlchemy URL of database `name` on a PostgreSQL server, as user :data:`PG_USER`."""
    from urllib.parse import quote

    secret = f":{quote(password, safe='')}" if password else ""
    scheme = f"postgresql+{driver}" if driver else "postgresql"
    return f"{scheme}://{PG_USER}{secret}@{host}:{port}/{name}"


def s3_client(
    endpoint: str | None = None,
    region: str | None = None,
    access_key_id: str | None = None,
    secret_access_key: str | None = None,
    connect_timeout_s: float = 5.0,
    read_timeout_s: float = 60.0,
    max_attempts: int = 2,
):
    """A boto3 S3 client with path-style addressing (SeaweedFS, MinIO and AWS all accept it).
    Arguments left None fall to boto3's own chain (``AWS_*`` variables, profiles, instance roles):
    corpus sources use it that way, the stack's data bucket and infra/ with :class:`StackSettings`'
    values (:meth:`StackSettings.s3_client`)."""
    import boto3  # here: only S3 users pay for it
    from botocore.config import Config

    config = Config(
        connect_timeout=connect_timeout_s,
        read_timeout=read_timeout_s,
        retries={"mode": "standard", "max_attempts": max_attempts},
        s3={"addressing_style": "path"},
    )
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=region,
        aws_access_key_id=access_key_id,
        aws_secret_access_key=secret_access_key,
        config=config,
    )
