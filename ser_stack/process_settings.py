"""The knobs of one process each, from the environment (:class:`ProcessSettings`): a training
process's heap and caches, how folds run, a served model's limits, infra/'s waits, a test session's
demands, and the variables only scripts read; docs/ENVIRONMENT.md is their table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

from pydantic import field_validator, model_validator

from ser_stack.environment import (
    EnvironmentSettings,
    env_field,
    flag,
    one_of,
    parsed,
    positive,
    stripped,
    user_path,
    whole_number,
)

HEAP_POLICIES = ("bounded", "glibc")
"""Values of SER_HEAP (ser_model/allocator.py)."""
DEFAULT_HEAP_POLICY = "glibc"
"""SER_HEAP unset: glibc's own policy (a fold stays under 1.5 GB since its batches take a few shapes)."""
FOLD_RUN_MODES = ("pool", "inline")
"""Values of SER_FOLD_RUNS; the first is the default (flows/fold_runs.py)."""
DEFAULT_MEMORY_CACHE_BYTES = 1 << 30
"""SER_MEMORY_CACHE_BYTES unset: 1 GiB, about 4.6 hours of 16 kHz float32 audio."""
DEFAULT_RETRAIN_CRON = "0 3 * * *"
"""SER_RETRAIN_CRON unset: the nightly retrain at 03:00 (flows/deploy.py)."""
CORPUS_ROOT_PREFIX = "SER_ROOT_"


def _serve_root(text: str) -> Path:
    resolved = Path(stripped(text)).resolve()
    if not resolved.is_dir():
        raise ValueError("not a folder; expected the folder whose files clients may name")
    return resolved


def _job_variables(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"expected a JSON object of work-pool job variables ({err})") from None
    if not isinstance(value, dict):
        raise ValueError("expected a JSON object of work-pool job variables")
    return value


class ProcessSettings(EnvironmentSettings):
    """The knobs of one process each: read where they are used (the column "used by"), with the
    variables only scripts read, so that this table is the whole list."""

    heap: Annotated[str, parsed(one_of(*HEAP_POLICIES))] = env_field(
        "SER_HEAP",
        DEFAULT_HEAP_POLICY,
        "a training process's C heap: `glibc` (its own policy) or `bounded` (large blocks unmapped when freed: more system CPU)",
        used_by=("ser_model/allocator.py `heap_policy`",),
    )
    memory_cache_bytes: Annotated[
        int, parsed(whole_number(0, f"a non-negative number of bytes, e.g. {DEFAULT_MEMORY_CACHE_BYTES}"))
    ] = env_field(
        "SER_MEMORY_CACHE_BYTES",
        DEFAULT_MEMORY_CACHE_BYTES,
        "decoded audio (or cached backbone states) a fold worker keeps in memory; 0 never caches",
        used_by=("ser_model/data.py `memory_cache_bytes`",),
    )
    nproc_per_node: int | None = env_field(
        "SER_NPROC_PER_NODE",
        None,
        "worker processes per fold (unset: one per visible CUDA device, else one)",
        used_by=("ser_model/launch.py `nproc_per_node`",),
    )
    audio_cache_dir: Annotated[Path | None, parsed(user_path)] = env_field(
        "SER_AUDIO_CACHE_DIR",
        None,
        "where a worker stages audio read from S3 (unset: `<state>/audio-cache`)",
        used_by=("data_contracts/staging.py `cache_from_env`",),
    )
    audio_cache_bytes: Annotated[
        int | None, parsed(whole_number(1, "a positive number of bytes, e.g. 50000000000"))
    ] = env_field(
        "SER_AUDIO_CACHE_BYTES",
        None,
        "the most that audio cache may hold (unset: no limit)",
        used_by=("data_contracts/staging.py `cache_from_env`",),
    )
    feature_cache_dir: Annotated[Path | None, parsed(user_path)] = env_field(
        "SER_FEATURE_CACHE_DIR",
        None,
        "the machine's frozen-backbone feature cache (unset: `<state>/feature-cache`)",
        used_by=("flows/feature_store.py `local_feature_cache_dir`",),
    )
    fold_runs: Annotated[str, parsed(one_of(*FOLD_RUN_MODES))] = env_field(
        "SER_FOLD_RUNS",
        FOLD_RUN_MODES[0],
        "how the train flow runs its folds: `pool` (flow runs on the work pool) or `inline` (subflows)",
        used_by=("flows/fold_runs.py `fold_runs_mode`",),
    )
    fold_job_variables: Annotated[dict[str, Any], parsed(_job_variables)] = env_field(
        "SER_FOLD_JOB_VARIABLES",
        meaning="a JSON object of work-pool job variables for every fold's flow run (infra/k8s/)",
        default_factory=dict,
        shown="{}",
        used_by=("flows/fold_runs.py `fold_job_variables`",),
    )
    fold_concurrency: Annotated[int, parsed(whole_number(1, "a positive whole number of folds at once"))] = (
        env_field(
            "SER_FOLD_CONCURRENCY",
            1,
            "folds that train at once on the `folds` queue (set at deploy time)",
            used_by=("flows/deploy.py `fold_concurrency`",),
        )
    )
    retrain_cron: str = env_field(
        "SER_RETRAIN_CRON",
        DEFAULT_RETRAIN_CRON,
        "the schedule of the nightly retrain deployment",
        used_by=("flows/deploy.py `configured_retrain_cron`", "infra/test (12 hours from its session)"),
    )
    corpus_roots: dict[str, str] = env_field(
        CORPUS_ROOT_PREFIX + "<CORPUS>",
        meaning="a corpus root (folder or s3://) in the worker's environment: one variable per corpus, "
        "its name upper-cased with - as _ (SER_ROOT_MSP_IMPROV)",
        default_factory=dict,
        shown="unset",
        used_by=("flows/roots.py `configured_roots`", "infra/demo (SER_ROOT_RAVDESS)"),
    )
    serving: Annotated[bool, parsed(flag)] = env_field(
        "SER_SERVING",
        False,
        "1 in a server other than MLflow's that wraps the pyfunc: turns the serving policy on",
        used_by=("flows/serving.py `serving_process`",),
    )
    serve_allowed_root: Annotated[Path | None, parsed(_serve_root)] = env_field(
        "SER_SERVE_ALLOWED_ROOT",
        None,
        "the folder whose files a served model's clients may name by path (unset: no paths)",
        used_by=("flows/serving.py `ServingPolicy.from_env`",),
    )
    serve_max_seconds: Annotated[float, parsed(positive(float))] = env_field(
        "SER_SERVE_MAX_SECONDS",
        60.0,
        "seconds of audio per row of a request",
        used_by=("flows/serving.py `ServingPolicy.from_env`",),
    )
    serve_max_rows: Annotated[int, parsed(positive(int))] = env_field(
        "SER_SERVE_MAX_ROWS", 32, "rows per request", used_by=("flows/serving.py `ServingPolicy.from_env`",)
    )
    serve_max_request_bytes: Annotated[int, parsed(positive(int))] = env_field(
        "SER_SERVE_MAX_REQUEST_BYTES",
        32 * 2**20,
        "bytes of one request's body (also the largest file read under the allowed root)",
        used_by=("flows/serving.py `ServingPolicy.from_env`",),
    )
    serve_max_segments_seconds: Annotated[float, parsed(positive(float))] = env_field(
        "SER_SERVE_MAX_SEGMENTS_SECONDS",
        600.0,
        "seconds of audio of all rows together in a request with the `segments` option",
        used_by=("flows/serving.py `ServingPolicy.from_env`",),
    )
    up_timeout_s: Annotated[float, parsed(positive(float))] = env_field(
        "SER_UP_TIMEOUT",
        180.0,
        "seconds `infra/up` (and `infra/restore`) wait for the services",
        used_by=("infra/stack.py `build_parser`",),
    )
    mlflow_workers: Annotated[
        int, parsed(whole_number(1, "a whole number of worker processes, 1 or more"))
    ] = env_field(
        "SER_MLFLOW_WORKERS",
        1,
        "worker processes of the MLflow server (each holds about 250 MiB)",
        used_by=("infra/ser_infra/mlflow_server.py `mlflow_workers`",),
    )
    pg_bin: Path | None = env_field(
        "SER_PG_BIN",
        None,
        "the folder of PostgreSQL's server programs (unset: the newest under /usr/lib/postgresql, else on PATH)",
        used_by=("infra/ser_infra/postgres.py `postgres_bin_dir`", "infra/setup"),
    )
    skip_browser: Annotated[bool, parsed(flag)] = env_field(
        "SER_SKIP_BROWSER", False, "1: do not install chromium", used_by=("infra/setup",)
    )
    skip_postgres: Annotated[bool, parsed(flag)] = env_field(
        "SER_SKIP_POSTGRES", False, "1: do not install Debian's postgresql", used_by=("infra/setup",)
    )
    python: str = env_field(
        "SER_PYTHON", "python3.11", "the interpreter of the project's virtualenv", used_by=("infra/setup",)
    )
    require_stack: Annotated[bool, parsed(flag)] = env_field(
        "SER_REQUIRE_STACK",
        False,
        "1: integration tests may not skip, and a traceback in the stack's logs fails the session",
        used_by=("tests/conftest.py `stack_required`", "infra/test (sets it)"),
    )
    require_data: Annotated[bool, parsed(flag)] = env_field(
        "SER_REQUIRE_DATA",
        False,
        "1: tests that need `../shared/data` fail rather than skip without it",
        used_by=("tests/conftest.py `data_required`", "infra/test (sets it)"),
    )

    @classmethod
    def reads(cls, name: str) -> bool:
        return name.startswith(CORPUS_ROOT_PREFIX) or super().reads(name)

    @model_validator(mode="before")
    @classmethod
    def _corpus_roots(cls, given: dict[str, Any]) -> dict[str, Any]:
        """The SER_ROOT_<CORPUS> variables, gathered into one field."""
        roots = {name: root for name, root in given.items() if name.startswith(CORPUS_ROOT_PREFIX)}
        return {**given, cls.variable("corpus_roots"): roots}

    @field_validator("nproc_per_node", mode="before")
    @classmethod
    def _processes(cls, raw: Any) -> int | None:
        if not (isinstance(raw, str) and raw.strip().isdigit() and int(raw) >= 1):
            # the value as given, unquoted: the message tests and scripts know
            raise ValueError(
                f"{cls.variable('nproc_per_node')}={raw}: expected a positive number of processes"
            )
        return int(raw)


def corpus_root_variable(corpus: str) -> str:
    """``SER_ROOT_<CORPUS>`` of a corpus name, e.g. ``SER_ROOT_MSP_IMPROV`` for ``msp-improv``."""
    return CORPUS_ROOT_PREFIX + corpus.upper().replace("-", "_")
