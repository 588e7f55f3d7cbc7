"""infra/backup and infra/restore on a second stack of their own (the suite's stack is shared by
other tests and must not be purged): fill it with a champion, runs, deployments, a variable, a
tuning study and a manifest; back it up while it runs; purge it, start it empty, restore; the
restored stack holds the same of each."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from ser_infra.backup import stack_is_empty
from ser_infra.logfaults import stack_tracebacks
from ser_stack.settings import DERIVED_CLIENT_VARIABLES

pytestmark = [pytest.mark.integration, pytest.mark.own_servers, pytest.mark.slow]

SECOND_STACK_PORTS = {
    "SER_S3_PORT": "8641",
    "SER_WEED_MASTER_PORT": "9641",
    "SER_WEED_VOLUME_PORT": "8651",
    "SER_WEED_FILER_PORT": "8661",
    "SER_WEED_ADMIN_PORT": "9661",
    "SER_MLFLOW_PORT": "5341",
    "SER_PREFECT_PORT": "4541",
    "SER_PG_PORT": "5342",
}
"""Apart from infra/up's and infra/test's defaults (and SeaweedFS's gRPC ports, each + 10000)."""
MODEL = "ser-backup-test"


def script(repo_root: Path, name: str, env: dict, *args: str, timeout: int = 300) -> str:
    done = subprocess.run(
        [str(repo_root / "infra" / name), *args],
        cwd=repo_root,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, f"infra/{name} {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def fill(settings, env: dict, repo_root: Path) -> None:
    """What a team's stack holds: the project's deployments (with their automations, queue and
    limits), a Prefect variable, a run with metrics and an artifact registered as the champion
    with tags, a tuning study with a trial, a manifest in the data bucket."""
    import mlflow
    import optuna
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import VariableCreate
    from prefect.settings import PREFECT_API_URL, temporary_settings

    done = subprocess.run(
        [sys.executable, "-m", "flows.deploy"],
        cwd=repo_root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    with temporary_settings(updates={PREFECT_API_URL: settings.prefect_api_url}):
        with get_client(sync_client=True) as client:
            client.create_variable(
                VariableCreate(name="ser-root-ravdess", value="/data/ravdess", tags=["root"])
            )
    client = mlflow.MlflowClient(settings.tracking_uri)
    experiment = client.create_experiment("ser-backup-test")
    for seed in (1, 2):
        run = client.create_run(experiment, tags={"seed": str(seed)})
        for step in range(3):
            client.log_metric(run.info.run_id, "uar", 0.5 + 0.1 * step + seed / 100, step=step)
        client.log_param(run.info.run_id, "lr", "0.001")
        client.log_text(run.info.run_id, f"weights of seed {seed}", "model/weights.txt")
        client.set_terminated(run.info.run_id)
    client.create_registered_model(MODEL, tags={"task": "ser"})
    version = client.create_model_version(MODEL, f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    client.set_model_version_tag(MODEL, version.version, "uar", "0.72")
    client.set_registered_model_alias(MODEL, "champion", version.version)
    study = optuna.create_study(
        study_name="ser-backup-test", storage=settings.tune_storage, direction="maximize"
    )
    study.optimize(lambda trial: trial.suggest_float("lr", 1e-4, 1e-2, log=True), n_trials=2)
    settings.s3_client().put_object(
        Bucket=settings.data_bucket, Key="manifests/ravdess/v1.parquet", Body=os.urandom(2048)
    )


def contents(settings) -> dict:
    """Everything `fill` put in, as plain data to compare: ids of what the database keeps, names
    and settings of what the Prefect API recreates (its ids are new)."""
    import mlflow
    import optuna
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    client = mlflow.MlflowClient(settings.tracking_uri)
    champion = client.get_model_version_by_alias(MODEL, "champion")
    experiments = client.search_experiments(filter_string="name != 'Default'")
    runs = client.search_runs([e.experiment_id for e in experiments])
    artifact = mlflow.artifacts.download_artifacts(
        run_id=champion.run_id, artifact_path="model/weights.txt", tracking_uri=settings.tracking_uri
    )
    s3 = settings.s3_client()
    objects = {}
    for bucket in (settings.mlflow_bucket, settings.data_bucket):
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            objects.update({f"{bucket}/{o['Key']}": o["ETag"] for o in page.get("Contents", [])})
    with temporary_settings(updates={PREFECT_API_URL: settings.prefect_api_url}):
        with get_client(sync_client=True) as prefect:
            deployments = {
                d.name: (d.work_pool_name, d.work_queue_name, d.parameters, [s.schedule for s in d.schedules])
                for d in prefect.read_deployments()
            }
            automations = {
                a.name: (a.enabled, type(a.trigger).__name__, [type(x).__name__ for x in a.actions])
                for a in prefect.read_automations()
            }
            variables = {v.name: (v.value, v.tags) for v in prefect.read_variables()}
            queues = {
                q.name: q.concurrency_limit
                for q in prefect.read_work_queues(work_pool_name=settings.work_pool)
            }
            limits = {c.name: c.limit for c in prefect.read_global_concurrency_limits()}
    study = optuna.load_study(study_name="ser-backup-test", storage=settings.tune_storage)
    return {
        "champion": (champion.version, champion.run_id, champion.source, champion.aliases, champion.tags),
        "model tags": client.get_registered_model(MODEL).tags,
        "runs": sorted(
            (r.info.run_id, r.info.status, r.data.metrics, r.data.params, r.data.tags.get("seed"))
            for r in runs
        ),
        "metric history": sorted(
            (r.info.run_id, [(m.step, m.value) for m in client.get_metric_history(r.info.run_id, "uar")])
            for r in runs
        ),
        "artifact": Path(artifact).read_text(),
        "objects": objects,
        "deployments": deployments,
        "automations": automations,
        "variables": variables,
        "queues": queues,
        "limits": limits,
        "trials": [(t.params, t.value) for t in study.trials],
    }


def test_a_backup_restores_onto_a_purged_stack_with_the_same_champion_runs_and_deployments(stack, repo_root):
    from ser_stack.settings import StackSettings

    state = stack.state_dir / f"second-stack-{uuid.uuid4().hex[:8]}"
    base = {k: v for k, v in os.environ.items() if k not in DERIVED_CLIENT_VARIABLES}
    env = {**base, **SECOND_STACK_PORTS, "SER_STATE_DIR": str(state), "SER_DB": stack.db}
    backup_dir = stack.state_dir / f"backup-{uuid.uuid4().hex[:8]}"
    try:
        script(repo_root, "up", env)
        settings = StackSettings.from_env(env)
        client_env = {**env, **settings.client_env()}
        fill(settings, client_env, repo_root)
        before = contents(settings)
        assert before["champion"][3] == ["champion"] and before["deployments"] and before["automations"]

        began = time.monotonic()
        said = script(repo_root, "backup", env, str(backup_dir))
        backup_s = time.monotonic() - began
        summary = json.loads((backup_dir / "backup.json").read_text())
        assert summary["db"] == stack.db and summary["prefect"]["deployments"] == len(before["deployments"])

        script(repo_root, "down", env, "--purge")
        assert not state.exists()
        script(repo_root, "up", env)
        settings = StackSettings.from_env(env)
        assert stack_is_empty(settings) == [], "a purged stack starts empty"
        began = time.monotonic()
        said += script(repo_root, "restore", env, str(backup_dir))
        restore_s = time.monotonic() - began
        after = contents(settings)
        print(f"backup {backup_s:.1f} s, restore {restore_s:.1f} s ({stack.db}); {said}")
        for key in before:
            assert after[key] == before[key], key

        refused = subprocess.run(
            [str(repo_root / "infra" / "restore"), str(backup_dir)],
            cwd=repo_root,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert refused.returncode == 1 and "not empty" in refused.stderr, refused.stderr
        faults = [
            f"{path.name}: {line}"
            for path in sorted((state / "logs").glob("*.log"))
            for line in stack_tracebacks(path.stem, path.read_text(errors="replace"), stack.db)
        ]
        assert faults == []
    finally:
        subprocess.run([str(repo_root / "infra" / "down"), "--purge"], cwd=repo_root, env=env, timeout=120)
        if backup_dir.exists():
            import shutil

            shutil.rmtree(backup_dir)
