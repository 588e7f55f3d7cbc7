"""Issue 25's done-when on the live stack: ``prefect deployment run tune-ravdess`` runs a tiny
study whose trials are flow runs on the pool's ``folds`` queue, logs a ``tune`` parent run with a
child run per trial, writes the best trial as a preset file; killing the process of a running
trial does not lose the study: the trial is retried with its parameters and resumes its checkpoint."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import uuid

import optuna
import pytest
from mlflow.tracking import MlflowClient

from flows.tune_tracking import PRESET_ARTIFACT
from ser_model.tuning.space import decode_choice
from ser_stack.names import RUN_KIND_TAG, RUN_KIND_TUNE, STUDY_TAG
from tests.e2e.test_train_ravdess import (
    FAST,
    build_subset,
    flow_run_state_and_logs,
    run_cli,
    run_deployment,
    user_shell_env,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1500)]


def test_tune_ravdess_runs_on_the_pool_and_survives_a_killed_trial(
    stack, shared_ravdess, repo_root, tmp_path, monkeypatch
):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    for key, value in stack.client_env().items():
        monkeypatch.setenv(key, value)
    root = tmp_path / "ravdess"
    build_subset(shared_ravdess, root, files_per_emotion=1)
    env = {**os.environ, **stack.client_env()}
    run_cli([sys.executable, "-m", "flows.deploy"], env, repo_root)
    elsewhere, shell = tmp_path / "elsewhere", user_shell_env(stack)
    elsewhere.mkdir()
    run_deployment("ingest-ravdess", {"root": str(root), "announce": False}, repo_root, elsewhere, {}, shell)

    study_name = f"e2e-{uuid.uuid4().hex[:8]}"
    params = {
        "trials": 2,
        # enough epochs that trial 0 is still training when its first epoch is seen (every 0.5 s):
        # fold 0 trains on 16 clips, an epoch takes about 0.1 s since the speed work, and at 3 epochs
        # the trial had ended 0.3 s after its first epoch, before the kill could land
        "epochs": 40,
        "folds": [0],  # the kill, retry and resume happen in fold 0; a second fold adds only time
        "overrides": {k: v for k, v in FAST.items() if k != "train.epochs"},
        "study": study_name,
        "heartbeat_grace_s": 6,
        "root": str(root),
    }
    outcome: dict[str, str] = {}
    runner = threading.Thread(
        target=lambda: outcome.update(
            run=run_deployment("tune-ravdess", params, repo_root, elsewhere, {}, shell)
        )
    )
    runner.start()

    storage = stack.tune_storage
    killed = None
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and runner.is_alive():
        try:
            trials = optuna.load_study(study_name=study_name, storage=storage).trials
        except KeyError:  # not created yet
            trials = []
        if trials and trials[0].intermediate_values and "pid" in trials[0].user_attrs:
            killed = trials[0]
            os.kill(
                int(killed.user_attrs["pid"]), signal.SIGKILL
            )  # the trial's flow-run process, mid-training
            break
        time.sleep(0.5)
    runner.join(timeout=1200)
    assert killed is not None, "trial 0 never reported an epoch"
    assert "run" in outcome, "the tune deployment run did not finish"

    with temporary_settings(updates={PREFECT_API_URL: stack.prefect_api_url}):
        state, logs = flow_run_state_and_logs(outcome["run"])
    assert state == "Completed", logs[-10:]
    study = optuna.load_study(study_name=study_name, storage=storage)
    assert study.trials[0].state.name == "FAIL"
    retries = [t for t in study.trials if t.system_attrs.get("failed_trial") == 0]
    assert (
        len(retries) == 1
        and retries[0].params == killed.params
        and retries[0].state.name in ("COMPLETE", "PRUNED")
    )
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in study.trials) == 2
    assert retries[0].user_attrs["folder"] == killed.user_attrs["folder"], (
        "the retry trains in the killed trial's folder"
    )
    text = "\n".join(logs)
    assert f"{killed.user_attrs['folder']}/fold-0/checkpoints/last" in text and "resumed from" in text, (
        "the retry resumed fold 0"
    )
    assert retries[0].user_attrs["pid"] != killed.user_attrs["pid"]

    client = MlflowClient(stack.tracking_uri)
    experiment = client.get_experiment_by_name("ser-ravdess")
    (parent,) = client.search_runs(
        [experiment.experiment_id],
        f"tags.`{STUDY_TAG}` = '{study_name}' and tags.`{RUN_KIND_TAG}` = '{RUN_KIND_TUNE}'",
    )
    children = client.search_runs(
        [experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
    assert sorted(int(c.data.tags["ser.trial"]) for c in children) == [t.number for t in study.trials]
    assert all(c.info.status in ("FINISHED", "FAILED") for c in children), "no trial run left RUNNING"
    assert parent.info.status == "FINISHED" and parent.data.metrics["best_valid_UA"] == pytest.approx(
        study.best_value
    )
    (artifact,) = client.list_artifacts(parent.info.run_id, PRESET_ARTIFACT)
    local = stack.state_dir / "presets" / f"{study_name}-best.json"
    preset = json.loads(local.read_text())
    assert artifact.path.endswith(local.name) and preset["source"]["trial"] == study.best_trial.number
    assert {k: preset["settings"][k] for k in study.best_params} == {
        k: decode_choice(v) for k, v in study.best_params.items()
    }
