"""Table datasets in the flows without servers (issue 34): the deployments a dataset gets, the
datasets the nightly retrain finds, a manifest version read back in a process that never saw the
dataset, and the source fingerprint the retrain compares. The live runs are in
tests/flows/test_ingest_flow.py."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from data_contracts.corpora import OFFICIAL_CORPORA, SPECS
from data_contracts.corpora.table import table_source_fingerprint
from data_contracts.table_ingest import run_table_ingest
from flows.deploy import ENTRYPOINTS, build_deployments, train_deployment
from flows.roots import registered_datasets
from flows.storage import load_manifest_version, publish_manifest, read_latest
from ser_model.presets import DEFAULT_PRESET


@pytest.fixture(autouse=True)
def forget_table_specs():
    yield
    for name in [n for n in SPECS if n not in OFFICIAL_CORPORA]:
        del SPECS[name]


@pytest.fixture
def table(shared_ravdess, tmp_path) -> Path:
    """Four speakers, two emotions each, renamed: a table dataset of real audio."""
    lines = ["path,label,speaker,channel"]
    for actor in range(1, 5):
        for emotion, label in (("03", "joy"), ("04", "sadness")):
            name = f"Actor_{actor:02d}/03-01-{emotion}-01-01-01-{actor:02d}.flac"
            (tmp_path / "calls" / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(shared_ravdess / name, tmp_path / "calls" / name)
            lines.append(f"{name},{label},agent{actor},phone")
    (tmp_path / "calls" / "labels.csv").write_text("\n".join(lines) + "\n")
    return tmp_path / "calls" / "labels.csv"


def test_a_dataset_gets_train_name_with_the_corpora_automation_and_ingest_table_is_deployed(repo_root):
    from prefect.flows import Flow

    deployments = {f"{d.flow_name}/{d.name}": d for d in build_deployments(work_pool="ser-process")}
    ingest_table = deployments["ingest-table/ingest-table"]
    assert ingest_table.entrypoint == ENTRYPOINTS["ingest-table"] == "flows/ingest.py:ingest_table"
    assert ingest_table.parameters == {"auto_train_preset": DEFAULT_PRESET, "auto_train_folds": None}
    train_flow = Flow.from_source(source=str(repo_root), entrypoint=ENTRYPOINTS["train"])
    calls = train_deployment(train_flow, "calls", "ser-process", "ser-data", "pipeline-check", [0])
    ravdess = deployments["train/train-ravdess"]
    assert calls.name == "train-calls" and calls.entrypoint == ravdess.entrypoint == "flows/train.py:train"
    assert calls.parameters == {"corpus": "calls", "manifest_version": "latest", "preset": DEFAULT_PRESET}
    (trigger,) = calls.triggers
    assert trigger.match.model_dump() == {
        "prefect.resource.id": "ser.manifest.calls",
        "ser.bucket": "ser-data",
    }
    assert trigger.parameters["corpus"] == "calls" and trigger.parameters["preset"] == "pipeline-check"
    assert trigger.parameters["folds"] == [0]
    with pytest.raises(ValueError, match="unknown dataset 'Calls!'"):
        train_deployment(train_flow, "Calls!", "ser-process", "ser-data")


def test_the_nightly_retrain_finds_the_datasets_registered_by_their_variable():
    names = ["ser-root-ravdess", "ser-root-calls", "ser-root-Bad Name", "ser-root-clinic-2", "ser-root-"]
    assert registered_datasets(lambda: names) == ["calls", "clinic-2"]
    assert registered_datasets(lambda: []) == []


def test_a_published_table_version_loads_in_a_process_that_never_saw_the_dataset(bucket, table):
    result = run_table_ingest(str(table), "calls", fold_count=4, workers=1, progress=False)
    publish_manifest(
        "calls",
        result.fingerprint,
        result.manifest,
        result.quarantine,
        result.folds,
        result.report,
        result.report["root"],
        bucket,
    )
    assert read_latest("calls", bucket)["root"] == str(table.parent)
    del SPECS["calls"]
    manifest, folds, report = load_manifest_version("calls", "latest", bucket)
    assert SPECS["calls"].labels == ("joy", "sadness") == tuple(report["labels"])
    assert list(manifest["metadata"].unique()) == ['{"channel": "phone"}']
    assert sorted(folds.loc[folds["role"] == "test", "speaker"]) == ["agent1", "agent2", "agent3", "agent4"]


def test_the_source_fingerprint_of_a_table_changes_with_its_files_not_without(table):
    first = table_source_fingerprint(str(table), "calls")
    assert table_source_fingerprint(str(table), "calls") == first
    audio = table.parent / "Actor_01" / "03-01-03-01-01-01-01.flac"
    audio.write_bytes(audio.read_bytes() + b"\0")
    second = table_source_fingerprint(str(table), "calls")
    assert second != first
    table.write_text(table.read_text().replace("agent4", "agent5"))
    assert table_source_fingerprint(str(table), "calls") != second
