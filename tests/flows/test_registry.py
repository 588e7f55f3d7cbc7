"""flows/registry.py and the release's logging: a model reaches the registry, and the release run
its metrics, without a statement the tracking database refuses (each refusal is an ERROR line in
PostgreSQL's log, a fault of the stack for tests/conftest.py's scan)."""

from __future__ import annotations

import json

import mlflow
import pytest
import sqlalchemy
from mlflow.tracking import MlflowClient

from flows.pyfunc import log_pyfunc
from flows.registry import create_model_version, logged_model_id
from flows.training_runs import log_fold_run
from ser_model.launch import RELEASE_FOLD, fold_folder_name
from ser_stack.names import registered_model_name
from tests.flows.conftest import CHECKPOINT_LABELS

LABELS = CHECKPOINT_LABELS  # the shared `checkpoint` fixture's (tests/flows/conftest.py)


@pytest.fixture
def refused_statements():
    """Every statement a database refused while the test ran (SQLAlchemy's ``handle_error`` on
    every engine: the local store's SQLite reports what PostgreSQL would log as an ERROR)."""
    refused = []

    def record(context):
        refused.append(f"{type(context.original_exception).__name__}: {context.original_exception}")

    sqlalchemy.event.listen(sqlalchemy.engine.Engine, "handle_error", record)
    yield refused
    sqlalchemy.event.remove(sqlalchemy.engine.Engine, "handle_error", record)


def test_logged_model_ids_are_read_from_logged_model_uris_only():
    assert logged_model_id("models:/m-0123abcd") == "m-0123abcd"
    for uri in ("models:/ser-ravdess/1", "models:/ser-ravdess@champion", "runs:/abc/model", "s3://b/m-1"):
        assert logged_model_id(uri) is None, uri


def test_versions_after_the_first_create_no_registered_model_and_link_the_logged_model(
    local_mlflow, experiment_id, checkpoint, monkeypatch, refused_statements
):
    """Three versions of one name: the registered model is created once; each version's source is
    its logged model, whose tag lists the version, as mlflow.register_model does; no statement is
    refused on the way."""
    creations = []
    create = MlflowClient.create_registered_model

    def counted(self, name, *args, **kwargs):
        creations.append(name)
        return create(self, name, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "create_registered_model", counted)
    with mlflow.start_run(experiment_id=experiment_id):
        first = log_pyfunc(checkpoint, registered_model_name=registered_model_name("ravdess"))
        second = log_pyfunc(checkpoint, registered_model_name=registered_model_name("ravdess"))
        info = log_pyfunc(checkpoint)
    third = create_model_version(local_mlflow, "ser-ravdess", info.model_uri, {"ser.note": "third"})
    assert [first.registered_model_version, second.registered_model_version, third] == [1, 2, "3"]
    assert creations == ["ser-ravdess"]
    for version, logged in ((1, first), (2, second), ("3", info)):
        registered = local_mlflow.get_model_version("ser-ravdess", str(version))
        assert registered.source == logged.model_uri
        tag = local_mlflow.get_logged_model(logged.model_id).tags["mlflow.modelVersions"]
        assert [(e["name"], str(e["version"])) for e in json.loads(tag)] == [("ser-ravdess", str(version))]
    assert local_mlflow.get_model_version("ser-ravdess", "3").tags == {"ser.note": "third"}
    assert refused_statements == []


def test_a_name_registered_meanwhile_by_another_process_is_taken_as_it_is(local_mlflow, monkeypatch):
    """Two flows registering their first version at once: both looked the name up and found
    nothing; the one that creates it second gets RESOURCE_ALREADY_EXISTS and goes on."""
    monkeypatch.setattr(MlflowClient, "search_registered_models", lambda self, **kwargs: [])
    local_mlflow.create_registered_model("ser-savee")
    assert create_model_version(local_mlflow, "ser-savee", "s3://ser-mlflow/elsewhere") == "1"
    assert local_mlflow.get_model_version("ser-savee", "1").source == "s3://ser-mlflow/elsewhere"


def test_the_release_run_takes_its_model_without_a_refused_metric(
    local_mlflow, experiment_id, checkpoint, tmp_path, refused_statements
):
    """A release selected on held-out speakers logs its selected epoch's validation scores; then
    its model is logged into the same run (flows/train.py), which makes MLflow re-log the run's
    metrics of the model's step with the model's id. The scores sit at the selected epoch's step,
    so nothing is logged twice."""
    out_dir = tmp_path / fold_folder_name(RELEASE_FOLD)
    out_dir.mkdir()
    valid = {"WA": 0.6, "UA": 0.55, "macro_f1": 0.5, "confusion": [[2, 0, 0], [1, 1, 0], [0, 0, 2]]}
    (out_dir / "result.json").write_text(json.dumps({"selected_epoch": 2, "valid": valid}))
    records = [{"epoch": e, "train": {"loss": 2.0 / e}, "valid": {"UA": 0.2 * e}} for e in (1, 2, 3)]
    (out_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    parent = local_mlflow.create_run(experiment_id).info.run_id
    run_id = log_fold_run(local_mlflow, experiment_id, parent, "ravdess", RELEASE_FOLD, out_dir, LABELS)
    with mlflow.start_run(run_id=run_id):
        log_pyfunc(checkpoint)
    history = local_mlflow.get_metric_history(run_id, "selected.valid.UA")
    assert [(m.step, m.value) for m in history] == [(2, 0.55)]
    assert refused_statements == []
