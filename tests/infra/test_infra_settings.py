"""The settings models: StackSettings' derived addresses, validation messages, secrets kept out of
repr; every SER_* variable a field, every field read; the generated table of docs/ENVIRONMENT.md."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from data_contracts.labels import CORPORA
from ser_infra.environment import plugin_env, stack_env
from ser_stack.environment import variables
from ser_stack.process_settings import corpus_root_variable
from ser_stack.settings import MODELS, REPO_ROOT, StackSettings, markdown


def after_env_sh(repo_root: Path, env: dict[str, str], script: str, times: int = 2) -> str:
    """stdout of ``script`` in bash after ``eval "$(infra/env.sh)"`` ran ``times`` times in ``env``."""
    setup = 'eval "$(infra/env.sh)" && ' * times
    done = subprocess.run(
        ["bash", "-c", setup + script],
        cwd=repo_root,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return done.stdout


def test_defaults_point_at_the_local_stack(tmp_path):
    settings = StackSettings.from_env({"SER_STATE_DIR": str(tmp_path)})
    assert settings.tracking_uri == "http://127.0.0.1:5000"
    assert settings.prefect_api_url == "http://127.0.0.1:4200/api"
    assert settings.s3_endpoint == "http://127.0.0.1:8333"
    assert (settings.data_bucket, settings.mlflow_bucket, settings.work_pool) == (
        "ser-data",
        "ser-mlflow",
        "ser-process",
    )
    assert settings.prefect_home == tmp_path / "prefect"


def test_client_env_round_trips(tmp_path):
    env = {
        "SER_STATE_DIR": str(tmp_path),
        "SER_MLFLOW_PORT": "5999",
        "SER_DATA_BUCKET": "other-data",
        "AWS_ACCESS_KEY_ID": "AKID",
        "AWS_SECRET_ACCESS_KEY": "s3cr3t-value",
    }
    settings = StackSettings.from_env(env)
    assert StackSettings.from_env(settings.client_env()) == settings
    assert settings.tracking_uri == "http://127.0.0.1:5999"


def test_postgres_settings_round_trip_and_put_tuning_studies_in_the_stacks_database(tmp_path):
    """With SER_DB=postgres the password comes from the state folder (written by infra/up), the
    Optuna storage defaults to the database ``optuna`` of the same server, and the client
    environment carries all of it (and reads back to equal settings)."""
    (tmp_path / "postgres-credentials.json").write_text(json.dumps({"user": "ser", "password": "p@ss/w"}))
    settings = StackSettings.from_env(
        {"SER_STATE_DIR": str(tmp_path), "SER_DB": "postgres", "SER_PG_PORT": "5999"}
    )
    assert settings.pg_password == "p@ss/w"
    assert settings.tune_storage == "postgresql://ser:p%40ss%2Fw@127.0.0.1:5999/optuna"
    assert (
        settings.database_url("prefect", "asyncpg")
        == "postgresql+asyncpg://ser:p%40ss%2Fw@127.0.0.1:5999/prefect"
    )
    assert StackSettings.from_env(settings.client_env()) == settings
    assert "p@ss/w" not in repr(settings) and "p%40ss" not in repr(settings)
    sqlite = StackSettings.from_env({"SER_STATE_DIR": str(tmp_path)})
    assert (sqlite.db, sqlite.tune_storage) == ("sqlite", f"sqlite:///{tmp_path / 'optuna.db'}")


def test_secrets_stay_out_of_repr(tmp_path):
    settings = StackSettings.from_env(
        {"SER_STATE_DIR": str(tmp_path), "AWS_ACCESS_KEY_ID": "AKID", "AWS_SECRET_ACCESS_KEY": "s3cr3t-value"}
    )
    assert "s3cr3t-value" not in repr(settings) and "AKID" not in repr(settings)
    assert "s3cr3t-value" not in str(settings)


def test_credentials_come_from_the_state_folder_when_not_in_the_environment(tmp_path):
    (tmp_path / "s3-credentials.json").write_text(
        json.dumps({"access_key_id": "K", "secret_access_key": "S"})
    )
    settings = StackSettings.from_env({"SER_STATE_DIR": str(tmp_path)})
    assert (settings.access_key_id, settings.secret_access_key) == ("K", "S")


@pytest.mark.parametrize("text", ["{not json", "[]", '{"access_key_id": "K"}'])
def test_an_unreadable_credentials_file_is_named_with_what_it_must_hold(tmp_path, text):
    (tmp_path / "s3-credentials.json").write_text(text)
    with pytest.raises(
        ValueError,
        match=r"s3-credentials\.json: .*expected a JSON object with access_key_id and secret_access_key",
    ):
        StackSettings.from_env({"SER_STATE_DIR": str(tmp_path)})


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SER_S3_PORT": "eighty"}, "SER_S3_PORT='eighty': expected a TCP port"),
        ({"SER_MLFLOW_PORT": "70000"}, "SER_MLFLOW_PORT=70000: expected a TCP port"),
        ({"SER_MLFLOW_PORT": "4200"}, "ports must differ"),
        ({"SER_DATA_BUCKET": "Ser_Data"}, "SER_DATA_BUCKET='Ser_Data': expected an S3 bucket name"),
        ({"SER_DB": "mysql"}, "SER_DB='mysql': expected one of sqlite, postgres"),
        ({"SER_DB": "postgres", "SER_PG_PORT": "4200"}, "ports must differ"),
    ],
)
def test_invalid_settings_are_refused_with_the_variable_named(tmp_path, env, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        StackSettings.from_env({"SER_STATE_DIR": str(tmp_path), **env})


def test_env_sh_exports_what_settings_derive(repo_root, tmp_path):
    env = {
        **os.environ,
        "SER_STATE_DIR": str(tmp_path),
        "SER_PREFECT_PORT": "4999",
        "AWS_ACCESS_KEY_ID": "AKID",
        "AWS_SECRET_ACCESS_KEY": "it's $ecret",
    }
    for name in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        env.pop(name, None)
    shown = after_env_sh(
        repo_root, env, 'echo "$PREFECT_API_URL|$AWS_SECRET_ACCESS_KEY|$PREFECT_HOME"', times=1
    )
    assert shown.strip() == f"http://127.0.0.1:4999/api|it's $ecret|{tmp_path / 'prefect'}"


def test_env_sh_puts_the_venv_first_on_path_once(repo_root, tmp_path):
    """`mlflow models serve` launches `uvicorn` by name: after eval "$(infra/env.sh)" in a shell
    whose PATH lacks .venv/bin, both resolve to the project's venv; a second eval adds nothing."""
    env = {**os.environ, "SER_STATE_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    mlflow, uvicorn, path = after_env_sh(repo_root, env, 'command -v mlflow uvicorn && echo "$PATH"').split()
    venv_bin = repo_root / ".venv" / "bin"
    assert Path(mlflow) == venv_bin / "mlflow" and Path(uvicorn) == venv_bin / "uvicorn"
    assert path == f"{venv_bin}:/usr/bin:/bin"


def test_env_sh_puts_the_venv_first_on_path_once_and_turns_on_the_plugin(repo_root, tmp_path):
    venv_bin = str(repo_root / ".venv" / "bin")
    env = {**os.environ, "SER_STATE_DIR": str(tmp_path), "PATH": f"/usr/bin:{venv_bin}:/bin"}
    env.pop("PREFECT_PLUGINS_ENABLED", None)
    shown = after_env_sh(
        repo_root,
        env,
        'echo "$PATH|$PREFECT_PLUGINS_ENABLED|$PREFECT_PLUGINS_ALLOW" && command -v prefect ser',
    )
    first, prefect, ser = shown.splitlines()
    path, enabled, allow = first.split("|")
    assert path.split(":") == [venv_bin, "/usr/bin", "/bin"]
    assert (prefect, ser) == (f"{venv_bin}/prefect", f"{venv_bin}/ser")
    assert (enabled, allow) == ("true", "ser-short-deployment-names")


def test_plugin_env_follows_the_project_prefect_toml(tmp_path):
    import tomllib

    settings = tomllib.loads((REPO_ROOT / "prefect.toml").read_text())["plugins"]
    assert plugin_env() == {
        "PREFECT_PLUGINS_ENABLED": str(settings["enabled"]).lower(),
        "PREFECT_PLUGINS_ALLOW": ",".join(settings["allow"]),
    }
    other = tmp_path / "prefect.toml"
    other.write_text("[plugins]\nenabled = false\n")
    assert plugin_env(other) == {"PREFECT_PLUGINS_ENABLED": "false"}


def test_the_stack_runs_without_the_shell_plugin_even_from_a_shell_that_has_it(monkeypatch):
    """The stack's processes (servers, worker, flow runs) run with Prefect's plugin system off, also
    when `infra/up` is started from a shell where `infra/env.sh` turned it on: Prefect's subprocess
    for a crashed run's hooks imports prefect inside its event loop, where plugin start-up fails
    (a traceback in the worker log for every crashed flow run, seen with a killed tuning trial)."""
    monkeypatch.setenv("PREFECT_PLUGINS_ENABLED", "true")
    env = stack_env(StackSettings.from_env())
    assert env["PREFECT_PLUGINS_ENABLED"] == "false"
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import prefect.settings as s; print(s.get_current_settings().plugins.enabled)",
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert done.stdout.strip() == "False", "the environment beats the project's prefect.toml"


def test_every_bad_variable_is_named_on_one_line_before_a_command_starts(repo_root, tmp_path):
    """`python -m ser_stack.settings` (what a command runs first: exit_if_bad_environment) names every
    bad variable of both models, with its value and what is expected, on one line; status 2."""
    bad = {"SER_S3_PORT": "x", "SER_HEAP": "jemalloc", "SER_FOLD_CONCURRENCY": "0"}
    env = {k: v for k, v in os.environ.items() if not k.startswith("SER_")}
    done = subprocess.run(
        [sys.executable, "-m", "ser_stack.settings"],
        cwd=repo_root,
        env={**env, "SER_STATE_DIR": str(tmp_path), **bad},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    for message in (
        "SER_S3_PORT='x': expected a TCP port number (1-65535)",
        "SER_HEAP='jemalloc': expected one of bounded, glibc",
        "SER_FOLD_CONCURRENCY='0': expected a positive whole number of folds at once",
    ):
        assert message in done.stderr


@pytest.mark.parametrize(
    "command",
    [
        ["-m", "ser_model.cli", "ingest", "ravdess", "/nowhere", "--out", "out"],
        ["infra/stack.py", "env"],
        ["-m", "flows.deploy"],
    ],
    ids=["ser", "infra", "deploy"],
)
def test_the_entry_points_refuse_a_bad_variable_before_they_start(repo_root, tmp_path, command):
    """`ser`, infra/stack.py and the deployments check every variable first: a bad one ends them with
    status 2 and one line naming it, before any work (the ser command would otherwise report /nowhere)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SER_")}
    done = subprocess.run(
        [sys.executable, *command],
        cwd=repo_root,
        env={**env, "SER_STATE_DIR": str(tmp_path), "SER_MEMORY_CACHE_BYTES": "lots"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert "SER_MEMORY_CACHE_BYTES='lots'" in done.stderr and "/nowhere" not in done.stderr, done.stderr


def test_the_environment_table_is_the_one_the_models_generate(repo_root):
    """docs/ENVIRONMENT.md is `python -m ser_stack.settings --markdown`: regenerate it after a change."""
    assert (repo_root / "docs" / "ENVIRONMENT.md").read_text() == markdown(), (
        "run: python -m ser_stack.settings --markdown > docs/ENVIRONMENT.md"
    )


SER_NAME = re.compile(r"\bSER_[A-Z0-9_]*[A-Z0-9](?:_<[A-Z]+>|_\*|_(?![A-Za-z0-9]))?")
"""A SER_* variable as source writes it: SER_HEAP, the family SER_ROOT_<CORPUS>, a group (SER_SERVE_*)
or a prefix (SER_ROOT_)."""


def source_files(repo_root: Path) -> dict[str, str]:
    """Path -> text of the Python, shell and configuration sources that may read a variable: every
    file of the packages, benchmarks/, infra/ and .ci/ (committed or not), and tests/conftest.py."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "--", *SOURCE_FOLDERS],
        cwd=repo_root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    sources = {}
    for path in [*listed, "tests/conftest.py"]:
        name = Path(path).name
        if path.startswith("benchmarks/results/"):  # measurements, not source
            continue
        if (name.endswith((".py", ".sh", ".yaml", ".yml", ".json")) or "." not in name) and (
            repo_root / path
        ).is_file():
            sources[path] = (repo_root / path).read_text(encoding="utf-8", errors="replace")
    return sources


SOURCE_FOLDERS = ("ser_model", "data_contracts", "ser_stack", "flows", "benchmarks", "infra", ".ci")
MODEL_MODULES = ("ser_stack/settings.py", "ser_stack/process_settings.py")


def ser_fields() -> list[tuple[type, str, str]]:
    """(model, field name, variable) of every SER_* variable of the models."""
    return [
        (model, name, variable)
        for model in MODELS
        for name, field in model.model_fields.items()
        for variable in variables(field)
        if variable.startswith("SER_")
    ]


def reads(text: str, path: str, field: str, variable: str) -> bool:
    """Whether a source reads (or sets) the variable: a Python file through the model's attribute or
    the name in quotes (infra/, until it reads the model); a script by name."""
    if path.endswith(".py"):
        return bool(re.search(rf"\.{field}\b|[\"']{re.escape(variable)}[\"']", text))
    return variable.removesuffix("<CORPUS>") in text


def test_every_ser_variable_in_the_source_is_a_field_and_every_field_is_read(repo_root):
    """Both directions: a SER_* name written in the source (code, scripts, docstrings) is a variable
    of the models (a SER_ROOT_ one names a corpus); and every SER_* field is read where its "used by"
    says (ProcessSettings), or somewhere outside the models (StackSettings)."""
    sources = source_files(repo_root)
    assert len(sources) > 100 and "infra/test" in sources, sorted(sources)
    known = {variable for _, _, variable in ser_fields()}
    known |= {corpus_root_variable(corpus) for corpus in CORPORA}
    unknown = {
        found: path
        for path, text in sources.items()
        for found in SER_NAME.findall(text)
        if not (
            found in known
            or found.endswith(("_", "_*"))
            and any(v.startswith(found.rstrip("*")) for v in known)
        )
    }
    assert not unknown, f"SER_* names in the source that no settings field declares: {unknown}"
    unread = []
    for model, field, variable in ser_fields():
        used_by = [entry.split()[0] for entry in model.model_fields[field].json_schema_extra["used_by"]]
        for place in used_by or ["anywhere but the models"]:
            readers = [
                path
                for path in sources
                if path == place or path.startswith(place) and place.endswith("/") or not used_by
            ]
            if not any(reads(sources[p], p, field, variable) for p in readers if p not in MODEL_MODULES):
                unread.append(f"{variable} ({model.__name__}.{field}) in {place}")
    assert not unread, f"fields nobody reads where the model says: {unread}"
