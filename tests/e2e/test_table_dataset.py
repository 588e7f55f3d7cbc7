"""Issue 34 "Done when" on the live stack: your own data, end to end.

A labels table built from 8 shared RAVDESS actors (labels renamed joy, sadness, anger, …, speakers
renamed, WAV/FLAC files in nested folders, and bad rows: a missing file, an empty label, a path
leaving the folder, a duplicate) → ``prefect deployment run ingest-table --param name=calls
--param source=TABLE`` → ``prefect deployment run train-calls`` (the literal short name) → the
model is registered as ``ser-calls`` with the table's classes and promoted → the table gains a
ninth speaker, is ingested again, and a second ``train-calls`` runs the monitor first, which
scores the champion on the new speaker's rows (an MLflow run of kind monitor in ``ser-calls``); that
training starts from the champion (``init``): its parent run names the pinned version, its fold's
result.json the head copied (same classes).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.e2e.test_train_ravdess import (
    INLINE_FOLDS,
    ONE_MODEL_RELEASE,
    PRESET,
    flow_run_state_and_logs,
    run_cli,
    run_deployment,
    user_shell_env,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NAME = "calls"
RENAMED = {"01": "neutral", "03": "joy", "04": "sadness", "05": "anger"}


def table_rows(shared: Path, folder: Path, actors: range) -> list[str]:
    """CSV lines of one take per renamed emotion and actor, copied to ``audio/<speaker>/<label>/``."""
    lines = []
    for actor in actors:
        speaker = f"agent-{chr(ord('a') + actor - 1)}"
        for emotion, label in RENAMED.items():
            name = f"03-01-{emotion}-01-01-01-{actor:02d}.flac"
            target = folder / "audio" / speaker / label / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(shared / f"Actor_{actor:02d}" / name, target)
            lines.append(f"audio/{speaker}/{label}/{name},{label},{speaker}")
    return lines


def write_table(shared: Path, folder: Path, actors: range) -> Path:
    lines = ["path,label,speaker", *table_rows(shared, folder, actors)]
    shutil.copyfile(folder / lines[1].split(",")[0], folder / "audio" / "again.flac")
    lines += [
        "audio/missing.flac,joy,agent-a",
        f"{lines[2].split(',')[0]},,agent-a",
        "../outside.flac,joy,agent-a",
        "audio/again.flac,joy,agent-a",
    ]
    (folder / "labels.csv").write_text("\n".join(lines) + "\n")
    return folder / "labels.csv"


@pytest.mark.timeout(1800)
def test_a_table_dataset_is_ingested_trained_registered_promoted_and_monitored(
    stack, shared_ravdess, repo_root, tmp_path, monkeypatch
):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    env = {**os.environ, **stack.client_env()}
    for key, value in stack.client_env().items():
        monkeypatch.setenv(key, value)
    folder = tmp_path / "calls"
    (tmp_path / "outside.flac").write_bytes(b"outside the table's folder")
    table = write_table(shared_ravdess, folder, range(1, 9))
    run_cli([sys.executable, "-m", "flows.deploy"], env, repo_root)
    elsewhere, shell = tmp_path / "elsewhere", user_shell_env(stack)
    elsewhere.mkdir()
    ingest_params = {"name": NAME, "source": str(table), "announce": False}
    train_params = {"preset": PRESET, "overrides": ONE_MODEL_RELEASE, "folds": [0]}
    first_ingest = run_deployment("ingest-table", ingest_params, repo_root, elsewhere, {}, shell)
    first_train = run_deployment(f"train-{NAME}", train_params, repo_root, elsewhere, INLINE_FOLDS, shell)
    with temporary_settings(updates={PREFECT_API_URL: stack.prefect_api_url}):
        states = {run: flow_run_state_and_logs(run) for run in (first_ingest, first_train)}
    assert [state for state, _ in states.values()] == ["Completed", "Completed"], {
        k: (s, logs[-5:]) for k, (s, logs) in states.items()
    }
    from flows.storage import load_manifest_version

    manifest, _, report = load_manifest_version(NAME)
    assert report["quarantine_counts"] == {
        "duplicate": 1,
        "empty_label": 1,
        "missing_file": 1,
        "path_escape": 1,
    }
    assert len(manifest) == 8 * len(RENAMED) and report["labels"] == sorted(RENAMED.values())

    client = MlflowClient(stack.tracking_uri)
    champion = client.get_model_version_by_alias(f"ser-{NAME}", "champion")
    assert json.loads(champion.tags["ser.labels"]) == sorted(RENAMED.values())

    table.write_text(table.read_text() + "\n".join(table_rows(shared_ravdess, folder, range(9, 10))) + "\n")
    second_ingest = run_deployment(
        "ingest-table", {"name": NAME, "announce": False}, repo_root, elsewhere, {}, shell
    )
    started_from = {**train_params, "init": f"models:/ser-{NAME}@champion"}  # issue 34 item 3: fine-tuning
    second_train = run_deployment(f"train-{NAME}", started_from, repo_root, elsewhere, INLINE_FOLDS, shell)
    with temporary_settings(updates={PREFECT_API_URL: stack.prefect_api_url}):
        states = {run: flow_run_state_and_logs(run)[0] for run in (second_ingest, second_train)}
    assert list(states.values()) == ["Completed", "Completed"], states
    experiment = client.get_experiment_by_name(f"ser-{NAME}")
    monitors = client.search_runs(
        [experiment.experiment_id],
        "tags.`ser.run_kind` = 'monitor'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    assert monitors and monitors[0].data.tags["ser.champion_version"] == champion.version
    assert (
        monitors[0].data.tags["ser.monitor.champion_manifest"]
        != monitors[0].data.tags["ser.monitor.manifest"]
    )
    pinned = f"models:/ser-{NAME}/{champion.version}"
    (parent,) = client.search_runs([experiment.experiment_id], "tags.`ser.init` LIKE 'models:/%'")
    assert parent.data.tags["ser.init"] == pinned
    (fold0,) = client.search_runs(
        [experiment.experiment_id],
        f"tags.`mlflow.parentRunId` = '{parent.info.run_id}' and tags.`ser.fold` = '0'",
    )
    init = json.loads(
        Path(client.download_artifacts(fold0.info.run_id, "result.json", str(tmp_path))).read_text()
    )["init"]
    assert (init["source"], init["head"], init["source_labels"]) == (
        pinned,
        "copied",
        sorted(RENAMED.values()),
    )
