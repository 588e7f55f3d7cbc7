"""`ser tune` without servers: a study logged to MLflow (a local store), a preset file that
`ser train` reads, and a study that resumes after its process is killed mid-trial."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from flows.cli import main
from ser_model.tuning.space import decode_choice
from ser_stack.names import RUN_KIND_TAG, RUN_KIND_TRIAL, RUN_KIND_TUNE, TRIAL_STATE_TAG
from tests.fixtures.corpora import make_ravdess

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
TINY = [
    "model.n_mels=40",
    "model.fbank_channels=[4,8,8,8]",
    "model.fbank_dim=32",
    "model.embed_dim=16",
    "model.spec_freq_width=5",
    "loss.supcon_proj_dim=16",
    "train.batch_size=8",
    "train.eval_batch_size=16",
    "train.max_seconds=1.0",
]


@pytest.fixture(scope="module")
def ravdess_root(tmp_path_factory) -> Path:
    """Twelve synthetic RAVDESS actors (three folds of four), eight clips each."""
    root = tmp_path_factory.mktemp("ravdess")
    make_ravdess(root, actors=range(1, 13), per_actor=8)
    return root


def tune_argv(root: Path, out: Path, trials: int, epochs: int, *extra: str) -> list[str]:
    sets = [arg for item in TINY for arg in ("--set", item)]
    return [
        "tune",
        "--corpus",
        "ravdess",
        "--root",
        str(root),
        "--trials",
        str(trials),
        "--epochs",
        str(epochs),
        "--folds",
        "0,1",
        "--out",
        str(out),
        *sets,
        *extra,
    ]


def test_ser_tune_logs_a_parent_and_a_child_per_trial_and_its_preset_trains(
    ravdess_root, tmp_path, monkeypatch, capsys
):
    """Issue 25's done-when, on a small corpus: 4 trials, one tune parent run with 4 child runs,
    a preset file, and `ser train --preset FILE` trains with the tuned values."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert (
        main(tune_argv(ravdess_root, tmp_path / "tune", 4, 1, "--preset-out", str(tmp_path / "best.json")))
        == 0
    )
    out = capsys.readouterr().out
    assert "wrote" in out and "best.json" in out

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("ser-ravdess")
    (parent,) = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`{RUN_KIND_TAG}` = '{RUN_KIND_TUNE}'"
    )
    children = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
    study = optuna.load_study(
        study_name="ser-ravdess-tune", storage=f"sqlite:///{tmp_path / 'tune' / 'study.db'}"
    )
    assert len(children) == len(study.trials) == 4
    assert parent.info.status == "FINISHED" and parent.data.metrics["best_valid_UA"] == pytest.approx(
        study.best_value
    )
    by_trial = {int(run.data.tags["ser.trial"]): run for run in children}
    for trial in study.trials:
        run = by_trial[trial.number]
        assert (
            run.data.tags[TRIAL_STATE_TAG] == trial.state.name
            and run.data.tags[RUN_KIND_TAG] == RUN_KIND_TRIAL
        )
        assert {k: json.loads(v) for k, v in run.data.params.items()} == {
            k: decode_choice(v) for k, v in trial.params.items()
        }, "list choices are logged as lists"
        history = client.get_metric_history(run.info.run_id, "fold0.valid.UA")
        assert [m.step for m in history] == [1]
        if trial.state == optuna.trial.TrialState.COMPLETE:
            assert run.data.metrics["objective"] == pytest.approx(trial.value)
    assert study.trials[0].user_attrs.get("enqueued") == "base recipe", (
        "the hand-set recipe is the first trial"
    )
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "study")}
    assert {"study/summary.json", "study/optimization_history.png"} <= artifacts
    assert [a.path for a in client.list_artifacts(parent.info.run_id, "preset")] == ["preset/best.json"]

    preset = json.loads((tmp_path / "best.json").read_text())
    assert preset["extends"] == "cpu-fbank" and preset["source"]["trial"] == study.best_trial.number
    assert {k: preset["settings"][k] for k in study.best_params} == {
        k: decode_choice(v) for k, v in study.best_params.items()
    }
    train = [
        "train",
        "--corpus",
        "ravdess",
        "--root",
        str(ravdess_root),
        "--fold",
        "0",
        "--preset",
        str(tmp_path / "best.json"),
        "--out",
        str(tmp_path / "fold0"),
    ]
    assert main(train) == 0
    trained = json.loads((tmp_path / "fold0" / "best" / "config.json").read_text())
    for key, value in study.best_params.items():
        section, name = key.split(".")
        value = decode_choice(value)
        assert (
            trained[section][name] == pytest.approx(value)
            if isinstance(value, float)
            else trained[section][name] == value
        ), key
    assert trained["train"]["epochs"] == 1 and trained["model"]["fbank_dim"] == 32, (
        "the study's fixed settings come along"
    )


def test_a_study_killed_mid_trial_resumes_that_trial_from_its_checkpoint(ravdess_root, tmp_path):
    """SIGKILL the `ser tune` process after the first epoch of trial 0; running the command again
    retries trial 0 with the same parameters in the same folder (resuming its checkpoint) and
    finishes the study with the number of trials asked for.

    An epoch of this tiny model takes about 0.06 s, and with 3 epochs the rest of trial 0 took
    0.45 s after its first checkpoint: a 0.5 s poll could miss it and the kill land after the
    trial had completed (it did, once, in CI). With 15 epochs fold 0 alone lasts about a second
    after its first checkpoint, and the test polls every 20 ms."""
    epochs = 15
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "OMP_NUM_THREADS": "2"}
    argv = [
        sys.executable,
        "-m",
        "flows.cli",
        *tune_argv(ravdess_root, tmp_path / "tune", 2, epochs, "--heartbeat-grace", "3"),
    ]
    storage = f"sqlite:///{tmp_path / 'tune' / 'study.db'}"
    checkpoint = tmp_path / "tune" / "ser-ravdess-tune" / "trial-0" / "fold-0" / "checkpoints" / "last"
    first_log = tmp_path / "first.log"
    # The test reads no database while the first process runs: it waits for trial 0's first
    # checkpoint on disk, so the study's storage is this command's alone until the kill.
    with open(first_log, "w") as log_file:
        first = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    try:
        while not checkpoint.exists():
            assert first.poll() is None, (
                "ser tune ended before its first epoch:\n" + first_log.read_text()[-3000:]
            )
            assert time.monotonic() < deadline, "trial 0 wrote no checkpoint within 300 s"
            time.sleep(0.02)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
    assert not (checkpoint.parents[1] / "result.json").exists(), "the kill came after fold 0 had ended"
    killed_params = optuna.load_study(study_name="ser-ravdess-tune", storage=storage).trials[0].params
    time.sleep(4)  # past the heartbeat grace: trial 0 is now stale

    second = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert second.returncode == 0, second.stderr[-3000:]
    study = optuna.load_study(study_name="ser-ravdess-tune", storage=storage)
    states = [t.state.name for t in study.trials]
    assert states[0] == "FAIL", states
    retries = [t for t in study.trials if t.system_attrs.get("failed_trial") == 0]
    assert (
        len(retries) == 1
        and retries[0].params == killed_params
        and retries[0].state.name in ("COMPLETE", "PRUNED")
    )
    assert "resumed from" in second.stderr and "trial-0/fold-0/checkpoints/last" in second.stderr
    assert sum(s in ("COMPLETE", "PRUNED") for s in states) == 2
