"""The monitor flow on the live stack: a champion whose fold mean it cannot reach on new rows is
flagged (MLflow run, artifact, a Degraded final state) and the documented automation acts on it."""

from __future__ import annotations

import shutil
import time
import uuid

import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    DeploymentFilter,
    DeploymentFilterId,
)
from prefect.flows import Flow
from prefect.states import StateType

from flows.ingest import ingest
from flows.monitor import DEGRADED_STATE, degraded_trigger, monitor
from ser_stack.names import CHAMPION, RUN_KIND_MONITOR, RUN_KIND_TAG
from tests.fixtures.champions import register_champion
from tests.fixtures.corpora import make_ravdess

pytestmark = [pytest.mark.integration, pytest.mark.timeout(400)]

NAME = "ser-ravdess"


@pytest.fixture
def champion_alias(stack):
    """ser-ravdess's champion alias as it was before the test, restored after it; the versions
    the test registers (listed in the yielded list) are deleted."""
    client = MlflowClient(stack.tracking_uri)
    try:
        before = client.get_model_version_by_alias(NAME, CHAMPION).version
    except MlflowException:
        before = None
    created: list[str] = []
    yield created
    if before is not None:
        client.set_registered_model_alias(NAME, CHAMPION, before)
    elif created:
        client.delete_registered_model_alias(NAME, CHAMPION)
    for version in created:
        client.delete_model_version(NAME, version)


def test_a_champion_below_its_fold_mean_on_new_rows_is_flagged_and_the_automation_acts(
    stack, live_bucket, prefect_api, champion_alias, repo_root, tmp_path
):
    before, after = tmp_path / "before", tmp_path / "after"
    make_ravdess(before, actors=range(1, 9), per_actor=4)
    shutil.copytree(before, after)
    make_ravdess(after, actors=[9], per_actor=4)
    trained_on = ingest(corpus="ravdess", root=str(before), workers=1, announce=False)["fingerprint"]
    now = ingest(corpus="ravdess", root=str(after), workers=1, announce=False)["fingerprint"]
    client = MlflowClient(stack.tracking_uri)
    experiment = client.get_experiment_by_name("ser-monitor-test")
    experiment_id = experiment.experiment_id if experiment else client.create_experiment("ser-monitor-test")
    champion = register_champion(client, experiment_id, tmp_path / "best", trained_on, {0: 1.0})
    champion_alias.append(champion)

    tag = uuid.uuid4().hex[:10]
    pool = f"ser-test-idle-{tag}"  # no worker: the run the automation starts stays scheduled
    train_flow = Flow.from_source(source=str(repo_root), entrypoint="flows/train.py:train")
    deployment = train_flow.to_deployment(
        name=f"degraded-test-{tag}",
        parameters={"corpus": "ravdess"},
        triggers=[degraded_trigger("ravdess", {"corpus": "ravdess", "folds": None})],
    )
    with get_client(sync_client=True) as prefect:
        prefect.create_work_pool(WorkPoolCreate(name=pool, type="process"))
        deployment_id = None
        try:
            deployment_id = deployment.apply(work_pool_name=pool)
            calm = monitor("ravdess", now, margin=1.0, return_state=True)
            assert calm.type == StateType.COMPLETED and calm.name == "Completed"
            assert calm.result()["new_rows"] == 4 and not calm.result()["degraded"]

            state = monitor("ravdess", now, margin=0.0, return_state=True)
            assert state.type == StateType.COMPLETED and state.name == DEGRADED_STATE, state
            found = state.result()
            assert found["champion_version"] == champion and found["new_rows"] == 4 and found["degraded"]
            run = client.get_run(found["run_id"])
            assert (
                run.data.tags[RUN_KIND_TAG] == RUN_KIND_MONITOR
                and run.data.tags["ser.monitor.degraded"] == "true"
            )
            assert run.data.metrics["degraded"] == 1.0 and run.data.metrics["champion_UA_mean"] == 1.0
            assert run.data.metrics["UA"] < 1.0 and run.data.metrics["drift.speaker"] == 1.0
            (artifact,) = prefect.read_artifacts(
                artifact_filter=ArtifactFilter(
                    flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])
                )
            )
            assert artifact.key == "monitor-ravdess" and "degraded on new data" in artifact.data

            deadline, runs = time.monotonic() + 60, []
            while not runs and time.monotonic() < deadline:
                time.sleep(1)
                runs = prefect.read_flow_runs(
                    deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
                )
            assert len(runs) == 1, "the automation did not act on the Degraded monitor run within 60 s"
            assert runs[0].parameters == {"corpus": "ravdess", "folds": None}
        finally:
            if deployment_id is not None:
                for run in prefect.read_flow_runs(
                    deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
                ):
                    prefect.delete_flow_run(run.id)
                prefect.delete_resource_owned_automations(f"prefect.deployment.{deployment_id}")
                prefect.delete_deployment(deployment_id)
            prefect.delete_work_pool(pool)
