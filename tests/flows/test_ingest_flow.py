"""The ingest flow on the live stack: publish, unchanged, artifact, event, bad data, S3 outage.

Each test works in a data bucket of its own (tests.flows.live_stack.live_bucket) on a tiny
synthetic RAVDESS corpus (tests.fixtures.corpora.make_ravdess).
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import pytest
from prefect import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter
from prefect.states import Failed

import flows.ingest
from data_contracts.errors import CorpusLayoutError
from flows.ingest import (
    MANIFEST_UPDATED_EVENT,
    ProgressToLog,
    ingest,
    is_s3_connection_failure,
    publish,
)
from flows.roots import CorpusRootNotFound, root_variable
from flows.storage import DataBucket, StorageUnavailableError, manifest_exists, object_key, read_latest
from ser_infra.component import wait_healthy
from ser_infra.environment import stack_env
from ser_infra.lifecycle import components
from ser_infra.seaweedfs import create_buckets, seaweed_s3_config
from ser_infra.state import start_process, stop_recorded, write_private
from ser_stack.settings import REPO_ROOT, StackSettings
from tests.fixtures.corpora import make_ravdess, make_savee, write_bad_audio
from tests.flows.live_stack import free_weed_ports

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def corpus(tmp_path) -> Path:
    """8 actors × 2 utterances (2 RAVDESS folds) and one unreadable file."""
    root = tmp_path / "ravdess"
    make_ravdess(root, actors=range(1, 9), per_actor=2)
    write_bad_audio(root / "Actor_03" / "03-01-05-02-02-02-03.wav", "unreadable")
    return root


def flow_run_artifacts(flow_run_id) -> list:
    with get_client(sync_client=True) as client:
        return client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )


# ----------------------------------------------------------------------------- fast, no stack


def test_progress_stream_logs_the_latest_bar_state_at_most_every_interval(caplog):
    """tqdm writes many carriage-return updates; the log gets the first, then at most one per
    interval, and always the final state."""
    logger = logging.getLogger("test.progress")
    stream = ProgressToLog(logger, interval_s=3600)
    with caplog.at_level(logging.INFO, logger="test.progress"):
        for done in range(11):
            stream.write(f"\ringest ravdess: {done * 10}%|")
        stream.flush_line()
    assert [r.getMessage() for r in caplog.records] == ["ingest ravdess: 0%|", "ingest ravdess: 100%|"]


# ----------------------------------------------------------------------------- live stack


@pytest.mark.integration
def test_ingest_publishes_then_reports_unchanged(live_bucket, prefect_api, corpus):
    state = ingest(corpus="ravdess", root=str(corpus), workers=1, return_state=True)
    outcome = state.result()
    assert outcome["status"] == "published"
    assert outcome["utterances"] == 16 and outcome["quarantined"] == 1
    pointer = read_latest("ravdess", live_bucket)
    assert pointer["fingerprint"] == outcome["fingerprint"] and pointer["root"] == str(corpus.resolve())
    assert manifest_exists("ravdess", outcome["fingerprint"], live_bucket)
    (artifact,) = flow_run_artifacts(state.state_details.flow_run_id)
    assert artifact.key == "ingest-ravdess"
    assert "**Published**" in artifact.data and "Actor_03/03-01-05-02-02-02-03.wav" in artifact.data

    manifest_key = object_key("manifest", "ravdess", outcome["fingerprint"])
    written_at = live_bucket.client.head_object(Bucket=live_bucket.name, Key=manifest_key)["LastModified"]
    again = ingest(corpus="ravdess", root=str(corpus), workers=1, announce=False, return_state=True)
    assert again.result()["status"] == "unchanged"
    assert again.result()["fingerprint"] == outcome["fingerprint"]
    assert read_latest("ravdess", live_bucket) == pointer
    assert (
        live_bucket.client.head_object(Bucket=live_bucket.name, Key=manifest_key)["LastModified"]
        == written_at
    )
    (artifact,) = flow_run_artifacts(again.state_details.flow_run_id)
    assert "**Unchanged**" in artifact.data

    # the same files at another root: no new version, but trainings must now read them there
    moved = corpus.parent / "ravdess-moved"
    shutil.copytree(corpus, moved)
    elsewhere = ingest(corpus="ravdess", root=str(moved), workers=1, announce=False)
    assert (elsewhere["status"], elsewhere["fingerprint"]) == ("unchanged", outcome["fingerprint"])
    assert read_latest("ravdess", live_bucket)["root"] == str(moved.resolve())

    # the first run announced its new version; the event names corpus, fingerprint and bucket
    event_filter = EventFilter(
        event=EventNameFilter(name=[MANIFEST_UPDATED_EVENT]),
        resource=EventResourceFilter(id=["ser.manifest.ravdess"]),
    )

    def ours() -> list:
        with get_client(sync_client=True) as client:
            events = client.read_events(filter=event_filter, limit=50).events
        return [e for e in events if e.resource.get("ser.bucket") == live_bucket.name]

    deadline = time.monotonic() + 30
    while not (events := ours()) and time.monotonic() < deadline:
        time.sleep(1)
    assert [e.resource["ser.fingerprint"] for e in events] == [outcome["fingerprint"]]


@pytest.mark.integration
def test_the_root_set_once_as_a_prefect_variable_is_read_at_run_time(
    live_bucket, prefect_api, tmp_path, monkeypatch
):
    """`prefect variable set ser-root-savee DIR` once; an ingest with no root finds it. Unset,
    the run fails naming every place it looked."""
    from prefect.variables import Variable

    monkeypatch.delenv("SER_ROOT_SAVEE", raising=False)
    make_savee(tmp_path / "savee")
    name = root_variable("savee")
    previous = Variable.get(name, default=None)
    try:
        Variable.set(name, str(tmp_path / "savee"), overwrite=True)
        outcome = ingest(corpus="savee", workers=1, announce=False)
        assert outcome["status"] == "published" and outcome["utterances"] == 28
        assert read_latest("savee", live_bucket)["root"] == str((tmp_path / "savee").resolve())
        Variable.unset(name)
        state = ingest(corpus="savee", workers=1, announce=False, return_state=True)
        with pytest.raises(CorpusRootNotFound) as missing:
            state.result()
        for place in (
            "flow parameter root",
            "Prefect variable ser-root-savee",
            "environment variable SER_ROOT_SAVEE",
        ):
            assert place in str(missing.value)
    finally:
        if previous is not None:
            Variable.set(name, previous, overwrite=True)
        else:
            Variable.unset(name)


@pytest.mark.integration
def test_a_corpus_in_the_wrong_layout_fails_with_its_message_and_writes_nothing(
    live_bucket, prefect_api, tmp_path
):
    (tmp_path / "not-ravdess" / "misc").mkdir(parents=True)
    (tmp_path / "not-ravdess" / "misc" / "notes.txt").write_text("no audio here")
    state = ingest(corpus="ravdess", root=str(tmp_path / "not-ravdess"), workers=1, return_state=True)
    assert state.is_failed()
    with pytest.raises(CorpusLayoutError, match="Actor_"):
        state.result()
    assert live_bucket.client.list_objects_v2(Bucket=live_bucket.name).get("KeyCount", 0) == 0


@pytest.fixture
def second_s3(tmp_path, stack):
    """A SeaweedFS of our own (temp state folder, free ports) that the test may stop and restart."""
    master, volume, filer, s3, admin = free_weed_ports(5)
    env = {
        "SER_STATE_DIR": str(tmp_path / "state"),
        "SER_S3_PORT": str(s3),
        "SER_WEED_MASTER_PORT": str(master),
        "SER_WEED_VOLUME_PORT": str(volume),
        "SER_WEED_FILER_PORT": str(filer),
        "SER_WEED_ADMIN_PORT": str(admin),
        "SER_MLFLOW_PORT": str(stack.mlflow_port),
        "SER_PREFECT_PORT": str(stack.prefect_port),
        "AWS_ACCESS_KEY_ID": "SERTESTKEY",
        "AWS_SECRET_ACCESS_KEY": "ser-test-secret-0123456789",
    }
    settings = StackSettings.from_env(env)
    write_private(settings.state_dir / "seaweedfs-s3.json", seaweed_s3_config(settings))
    (settings.state_dir / "seaweedfs").mkdir(parents=True)
    (component,) = [c for c in components(settings) if c.name == "s3"]

    def start() -> None:
        start_process(settings.state_dir, "s3", component.argv, stack_env(settings), REPO_ROOT)
        wait_healthy(settings, component, 60)

    def stop() -> None:
        stop_recorded(settings.state_dir, ["s3"])

    start()
    create_buckets(settings)
    yield settings, start, stop
    stop()


@pytest.mark.integration
def test_s3_stopping_during_ingest_leaves_latest_and_a_rerun_completes(
    second_s3, prefect_api, corpus, monkeypatch
):
    """The real fault: the weed process serving S3 is stopped after the corpus was checked and
    before the manifest is written. The flow fails with an S3 error after its retries, latest
    still names the previous version, and a rerun once S3 is back publishes the new one."""
    settings, start_s3, stop_s3 = second_s3
    for key, value in settings.client_env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(
        flows.ingest, "publish", flows.ingest.publish.with_options(retries=1, retry_delay_seconds=1)
    )
    first = ingest(corpus="ravdess", root=str(corpus), workers=1, announce=False)
    make_ravdess(corpus, actors=range(9, 13), per_actor=2)

    real_run_ingest = flows.ingest.run_ingest

    def run_ingest_then_stop_s3(*args, **kwargs):
        result = real_run_ingest(*args, **kwargs)
        stop_s3()
        return result

    monkeypatch.setattr(flows.ingest, "run_ingest", run_ingest_then_stop_s3)
    state = ingest(corpus="ravdess", root=str(corpus), workers=1, announce=False, return_state=True)
    assert state.is_failed()
    assert "unreachable" in state.message and settings.s3_endpoint in state.message

    start_s3()
    bucket = DataBucket.from_settings(settings)
    assert read_latest("ravdess", bucket)["fingerprint"] == first["fingerprint"]
    monkeypatch.setattr(flows.ingest, "run_ingest", real_run_ingest)
    rerun = ingest(corpus="ravdess", root=str(corpus), workers=1, announce=False)
    assert rerun["status"] == "published" and rerun["previous"] == first["fingerprint"]
    assert rerun["utterances"] == 16 + 8
    assert read_latest("ravdess", bucket)["fingerprint"] == rerun["fingerprint"]


def test_publication_is_retried_on_s3_connection_errors_only():
    assert publish.retries == 2
    assert is_s3_connection_failure(publish, None, Failed(data=StorageUnavailableError("S3 endpoint down")))
    assert not is_s3_connection_failure(publish, None, Failed(data=CorpusLayoutError("no Actor_NN folder")))
    assert not is_s3_connection_failure(publish, None, Failed(data=PermissionError("AccessDenied")))


@pytest.mark.integration
def test_ingest_table_publishes_remembers_its_source_and_applies_train_name(
    live_bucket, prefect_api, shared_ravdess, tmp_path
):
    """Issue 34: `ingest-table --param name=N --param source=TABLE` publishes the dataset's manifest,
    sets the Prefect Variable ser-root-N to the table and applies train-N (with its automation on
    N's new manifests); a second run without a source finds the table in the variable."""
    import uuid

    from prefect.variables import Variable

    from flows.ingest import ingest_table

    name = f"table-{uuid.uuid4().hex[:8]}"
    lines = ["path,label,speaker"]
    for actor in range(1, 5):
        for emotion, label in (("03", "joy"), ("04", "sadness")):
            relative = f"audio/Actor_{actor:02d}/03-01-{emotion}-01-01-01-{actor:02d}.flac"
            (tmp_path / "calls" / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(shared_ravdess / relative.removeprefix("audio/"), tmp_path / "calls" / relative)
            lines.append(f"{relative},{label},agent-{actor}")
    lines.append("../escape.flac,joy,agent-1")
    table = tmp_path / "calls" / "labels.csv"
    table.write_text("\n".join(lines) + "\n")
    try:
        outcome = ingest_table(name=name, source=str(table), workers=1, announce=False)
        assert outcome["status"] == "published" and outcome["utterances"] == 8 and outcome["quarantined"] == 1
        assert outcome["deployment"] == f"train/train-{name}"
        assert read_latest(name, live_bucket)["root"] == str(table.parent)
        assert Variable.get(root_variable(name)) == str(table)
        with get_client(sync_client=True) as client:
            deployment = client.read_deployment_by_name(f"train/train-{name}")
        assert deployment.parameters["corpus"] == name and deployment.entrypoint == "flows/train.py:train"
        again = ingest_table(name=name, workers=1, announce=False)
        assert (again["status"], again["fingerprint"]) == ("unchanged", outcome["fingerprint"])
    finally:
        Variable.unset(root_variable(name))
        with get_client(sync_client=True) as client:
            try:
                client.delete_deployment(client.read_deployment_by_name(f"train/train-{name}").id)
            except Exception:  # noqa: BLE001 - nothing to clean when the run failed before applying it
                pass
