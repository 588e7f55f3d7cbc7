"""flows.deploy: the sixteen deployments and the manifest automation, built and applied."""

from __future__ import annotations

import time
import uuid

import pytest
from prefect import get_client

from data_contracts.corpora import OFFICIAL_CORPORA as CORPORA
from flows.deploy import (
    apply_deployments,
    build_deployments,
    configured_retrain_cron,
    deployment_names,
    main,
    parse_folds,
)
from ser_model.presets import DEFAULT_PRESET
from ser_stack.process_settings import DEFAULT_RETRAIN_CRON

pytestmark = pytest.mark.timeout(240)

TEMPLATE = "{{ event.resource['ser.fingerprint'] }}"


@pytest.fixture(scope="module")
def deployments():
    return {f"{d.flow_name}/{d.name}": d for d in build_deployments(work_pool="ser-process")}


def test_sixteen_deployments_with_their_parameters_schedule_and_trigger(deployments, repo_root):
    corpora = ("iemocap", "msp-improv", "ravdess", "savee")
    expected = {f"{flow}/{flow}-{corpus}" for flow in ("ingest", "train", "tune") for corpus in corpora}
    expected |= {"retrain/retrain-nightly", "train-fold/train-fold", "tune-trial/tune-trial"}
    expected |= {"ingest-table/ingest-table"}  # train-<dataset> is applied by a dataset's first ingest
    assert len(expected) == 16 and len(build_deployments(work_pool="ser-process")) == 16, "no duplicate"
    assert set(deployments) == expected
    names = deployment_names()  # what the integration test and `infra/up` look up
    assert len(names) == len(set(names)) and set(names) == expected
    for corpus in CORPORA:
        ingest, train = deployments[f"ingest/ingest-{corpus}"], deployments[f"train/train-{corpus}"]
        assert ingest.parameters["corpus"] == corpus and ingest.entrypoint == "flows/ingest.py:ingest"
        assert train.parameters == {"corpus": corpus, "manifest_version": "latest", "preset": DEFAULT_PRESET}
        (trigger,) = train.triggers
        assert trigger.expect == {"ser.manifest.updated"}
        assert trigger.match.model_dump()["prefect.resource.id"] == f"ser.manifest.{corpus}"
        assert trigger.parameters == {
            "corpus": corpus,
            "manifest_version": TEMPLATE,
            "preset": DEFAULT_PRESET,
            "folds": None,
        }
        assert not ingest.schedules and not train.schedules
    retrain = deployments["retrain/retrain-nightly"]
    assert [s.schedule.cron for s in retrain.schedules] == [configured_retrain_cron()]
    assert all(str(d.storage.destination) == str(repo_root) for d in deployments.values())
    assert all(d.work_pool_name == "ser-process" for d in deployments.values())
    fold = deployments["train-fold/train-fold"]
    assert fold.entrypoint == "flows/train.py:train_fold" and fold.work_queue_name == "folds"
    for corpus in CORPORA:
        tune = deployments[f"tune/tune-{corpus}"]
        assert tune.entrypoint == "flows/tune.py:tune" and tune.parameters == {
            "corpus": corpus,
            "preset": DEFAULT_PRESET,
        }
        assert not tune.schedules and not tune.triggers and tune.work_queue_name != "folds"
    trial = deployments["tune-trial/tune-trial"]
    assert trial.entrypoint == "flows/tune.py:tune_trial" and trial.work_queue_name == "folds", (
        "trials queue beside the folds"
    )


def test_the_nightly_retrain_runs_at_three_unless_configured(monkeypatch):
    monkeypatch.delenv("SER_RETRAIN_CRON", raising=False)
    assert configured_retrain_cron() == DEFAULT_RETRAIN_CRON == "0 3 * * *"
    built = {d.name: d for d in build_deployments(work_pool="ser-process")}
    assert [s.schedule.cron for s in built["retrain-nightly"].schedules] == ["0 3 * * *"]
    monkeypatch.setenv("SER_RETRAIN_CRON", "15 9 * * *")
    assert configured_retrain_cron() == "15 9 * * *"


def test_roots_are_not_baked_in_at_deploy_time(monkeypatch, tmp_path):
    """A root in the deploying shell must not shadow the run-time places (flows/roots.py)."""
    monkeypatch.setenv("SER_ROOT_SAVEE", str(tmp_path))
    monkeypatch.setenv("SER_RETRAIN_CRON", "30 1 * * 0")
    built = {d.name: d for d in build_deployments(work_pool="ser-process")}
    assert built["ingest-savee"].parameters == {"corpus": "savee"}
    assert [s.schedule.cron for s in built["retrain-nightly"].schedules] == ["30 1 * * 0"]


def test_the_automation_states_the_recipe_and_folds_it_trains():
    built = {
        d.name: d
        for d in build_deployments(
            work_pool="ser-process", auto_train_preset="paper-wavlm", auto_train_folds=[0, 2]
        )
    }
    (trigger,) = built["train-iemocap"].triggers
    assert trigger.parameters == {
        "corpus": "iemocap",
        "manifest_version": TEMPLATE,
        "preset": "paper-wavlm",
        "folds": [0, 2],
    }
    assert (parse_folds("all"), parse_folds("0,2")) == (None, [0, 2])
    with pytest.raises(SystemExit):
        main(["--auto-train-folds", "first"])


@pytest.mark.integration
def test_apply_is_idempotent_and_the_api_lists_all_of_them(deployments, stack, prefect_api):
    first = apply_deployments(list(deployments.values()), stack.work_pool)
    second = apply_deployments(list(deployments.values()), stack.work_pool)
    assert first == second
    with get_client(sync_client=True) as client:
        assert (
            client.read_work_queue_by_name("folds", work_pool_name=stack.work_pool).concurrency_limit == 1
        ), "one fold at a time by default"
        for full_name in deployment_names():
            deployment = client.read_deployment_by_name(full_name)
            assert deployment.work_pool_name == stack.work_pool
            assert deployment.parameters == deployments[full_name].parameters
            cron = [s.schedule.cron for s in deployment.schedules]
            assert cron == ([configured_retrain_cron()] if full_name == "retrain/retrain-nightly" else [])
        for corpus in CORPORA:
            deployment = client.read_deployment_by_name(f"train/train-{corpus}")
            owned = client.read_resource_related_automations(f"prefect.deployment.{deployment.id}")
            assert len(owned) == 1, f"train-{corpus} should own exactly one automation after two applies"
            (automation,) = owned
            assert automation.trigger.expect == {"ser.manifest.updated"}
            assert automation.trigger.match.model_dump()["ser.bucket"] == stack.data_bucket
            (action,) = automation.actions
            assert action.deployment_id == deployment.id
            assert action.parameters == {
                "corpus": corpus,
                "manifest_version": TEMPLATE,
                "preset": DEFAULT_PRESET,
                "folds": None,
            }
        limits = {limit.name: limit.limit for limit in client.read_global_concurrency_limits(limit=200)}
        assert all(limits.get(f"train-{corpus}", 0) >= 1 for corpus in CORPORA), limits


@pytest.mark.integration
def test_a_manifest_event_starts_a_train_run_on_that_fingerprint(stack, prefect_api, repo_root):
    """The automation's template renders: a ser.manifest.updated event creates a run of the
    train deployment with manifest_version = the event's fingerprint. The deployment here is a
    throwaway one on a work pool with no worker, so the run stays scheduled and nothing trains."""
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.events import emit_event
    from prefect.flows import Flow

    from flows.deploy import manifest_trigger

    tag = uuid.uuid4().hex[:10]
    pool, bucket, fingerprint = f"ser-test-idle-{tag}", f"ser-test-{tag}", "c0" * 32
    train_flow = Flow.from_source(source=str(repo_root), entrypoint="flows/train.py:train")
    deployment = train_flow.to_deployment(
        name=f"trigger-test-{tag}",
        parameters={"corpus": "savee"},
        triggers=[manifest_trigger("savee", bucket)],
    )
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
        deployment_id = None
        try:
            deployment_id = deployment.apply(work_pool_name=pool)
            emit_event(
                event="ser.manifest.updated",
                resource={
                    "prefect.resource.id": "ser.manifest.savee",
                    "ser.fingerprint": fingerprint,
                    "ser.bucket": bucket,
                },
            )
            deadline = time.monotonic() + 60
            runs = []
            while not runs and time.monotonic() < deadline:
                time.sleep(1)
                runs = client.read_flow_runs(
                    deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
                )
            assert len(runs) == 1, "the automation did not start a run within 60 s"
            assert runs[0].parameters == {
                "corpus": "savee",
                "manifest_version": fingerprint,
                "preset": DEFAULT_PRESET,
                "folds": None,
            }
        finally:
            if deployment_id is not None:
                for run in client.read_flow_runs(
                    deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
                ):
                    client.delete_flow_run(run.id)
                client.delete_resource_owned_automations(f"prefect.deployment.{deployment_id}")
                client.delete_deployment(deployment_id)
            client.delete_work_pool(pool)
