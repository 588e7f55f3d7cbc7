"""The literal `prefect deployment run <short-name>` from the project folder, against the live Prefect server."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

FLOW_DIR = Path(__file__).resolve().parent
RUN_TIMEOUT_S = 180


async def create_deployment(api_url: str, flow_name: str, deployment_name: str, work_pool: str) -> uuid.UUID:
    from prefect.client.orchestration import PrefectClient

    async with PrefectClient(api=api_url) as client:
        flow_id = await client.create_flow_from_name(flow_name)
        return await client.create_deployment(
            flow_id=flow_id,
            name=deployment_name,
            work_pool_name=work_pool,
            entrypoint="tiny_flow.py:probe",
            pull_steps=[{"prefect.deployments.steps.set_working_directory": {"directory": str(FLOW_DIR)}}],
        )


async def delete_deployments(api_url: str, ids: list[uuid.UUID]) -> None:
    """Delete the deployments and their flow runs, so the shared server is left as found."""
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    async with PrefectClient(api=api_url) as client:
        runs = await client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=ids))
        )
        for run in runs:
            await client.delete_flow_run(run.id)
        for deployment_id in ids:
            await client.delete_deployment(deployment_id)


async def flow_run_states(api_url: str, deployment_id: uuid.UUID) -> list[str]:
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    async with PrefectClient(api=api_url) as client:
        runs = await client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
        )
        return [run.state.type.value for run in runs if run.state is not None]


def prefect_cli(repo_root: Path, stack, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **stack.client_env(), "COLUMNS": "250"}
    env.pop("PREFECT_PLUGINS_ENABLED", None)  # must come from the project's prefect.toml
    return subprocess.run(
        [str(repo_root / ".venv" / "bin" / "prefect"), *args],
        cwd=repo_root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_short_name_runs_the_deployment_and_ambiguity_is_refused(repo_root, stack):
    short = f"plugin-probe-{uuid.uuid4().hex[:8]}"
    api = stack.prefect_api_url
    created = [asyncio.run(create_deployment(api, "ser-plugin-probe", short, stack.work_pool))]
    try:
        ran = prefect_cli(repo_root, stack, "deployment", "run", short)
        assert ran.returncode == 0, ran.stdout + ran.stderr
        assert f"ser-plugin-probe/{short}" in ran.stdout

        deadline = time.monotonic() + RUN_TIMEOUT_S
        states = asyncio.run(flow_run_states(api, created[0]))
        while states != ["COMPLETED"] and time.monotonic() < deadline:
            assert not {"FAILED", "CRASHED"} & set(states), (
                f"probe flow run ended {states}; see the worker log"
            )
            time.sleep(1.0)
            states = asyncio.run(flow_run_states(api, created[0]))
        assert states == ["COMPLETED"], (
            f"the worker did not complete the probe run within {RUN_TIMEOUT_S} s: {states}"
        )

        created.append(asyncio.run(create_deployment(api, "ser-plugin-probe-twin", short, stack.work_pool)))
        ambiguous = prefect_cli(repo_root, stack, "deployment", "run", short)
        output = ambiguous.stdout + ambiguous.stderr
        assert ambiguous.returncode != 0
        assert f"ser-plugin-probe/{short}" in output and f"ser-plugin-probe-twin/{short}" in output

        canonical = prefect_cli(
            repo_root, stack, "deployment", "run", f"ser-plugin-probe-twin/{short}", "--start-in", "1 day"
        )
        assert canonical.returncode == 0, canonical.stdout + canonical.stderr
    finally:
        asyncio.run(delete_deployments(api, created))


def test_short_name_works_from_any_folder_after_env_sh(repo_root, stack, tmp_path):
    """A shell outside the project, with only `eval "$(infra/env.sh)"` done: `prefect` is on PATH
    and resolves a short name (the plugin is switched on by env.sh, not by a prefect.toml in cwd)."""
    short = f"plugin-probe-{uuid.uuid4().hex[:8]}"
    created = [
        asyncio.run(create_deployment(stack.prefect_api_url, "ser-plugin-probe", short, stack.work_pool))
    ]
    keep = (
        "HOME",
        "PYTHONPATH",
        "SER_STATE_DIR",
        *(
            f"SER_{p}_PORT"
            for p in ("S3", "WEED_MASTER", "WEED_VOLUME", "WEED_FILER", "WEED_ADMIN", "MLFLOW", "PREFECT")
        ),
    )
    env = {k: os.environ[k] for k in keep if k in os.environ} | {"PATH": "/usr/bin:/bin", "COLUMNS": "250"}
    env |= {k: v for k, v in stack.client_env().items() if k.startswith("SER_")}
    script = f'eval "$({repo_root}/infra/env.sh)" && prefect deployment run {short} --start-in "1 day"'
    try:
        ran = subprocess.run(
            ["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
        )
    finally:
        asyncio.run(delete_deployments(stack.prefect_api_url, created))
    assert not (tmp_path / "prefect.toml").exists()
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert f"ser-plugin-probe/{short}" in ran.stdout
