"""Train flow pieces: MLflow helpers, the torchrun worker launch, fold logging through outages."""

from __future__ import annotations

import json
import logging
import re
import statistics
import textwrap
from pathlib import Path

import numpy as np
import pytest
from mlflow.exceptions import MlflowException

from flows import mlflow_ui, tracking, training_runs
from flows.fold_runs import selected_folds
from flows.promote import protocol_name
from flows.training_runs import log_fold_run
from ser_model.allocator import HUGE_PAGES_TUNABLE
from ser_model.launch import (
    RELEASE_FOLD,
    BadDataError,
    FoldJob,
    WorkerInfraError,
    nproc_per_node,
    run_worker,
    worker_env,
    worker_exit_code,
    write_fold_times,
)
from ser_model.metrics import (
    HEADLINE_METRICS,
    fold_summary,
    headline_scores,
    last_epoch_rule,
    summed_confusion,
)

LABELS = ("neutral", "calm", "happy")

FAKE_WORKER = textwrap.dedent(
    """
    import argparse, json, os, signal, sys
    from pathlib import Path

    parser = argparse.ArgumentParser()
    for name in ("--config", "--manifest", "--folds", "--fold", "--audio-root", "--out"):
        parser.add_argument(name)
    args = parser.parse_args()
    out = Path(args.out)
    mode = os.environ["FAKE_WORKER_MODE"]
    print("worker sees secret:", "AWS_SECRET_ACCESS_KEY" in os.environ, flush=True)
    with open(out / "metrics.jsonl", "a") as f:
        for epoch in (1, 2):
            f.write(json.dumps({"epoch": epoch, "train": {"loss": 1.0 / epoch}, "valid": {"UA": 0.3 * epoch}}) + "\\n")
            f.flush()
            print(f"epoch {epoch} done", flush=True)
    if mode == "bad-data":
        print("empty training split for fold", args.fold, flush=True)
        sys.exit(3)
    if mode == "killed":
        os.kill(os.getpid(), signal.SIGKILL)
    (out / "result.json").write_text(json.dumps({"selected_epoch": 2, "test": {"WA": 0.5, "UA": 0.4, "macro_f1": 0.3, "confusion": [[1, 0, 0], [0, 1, 1], [0, 0, 2]]}}))
    """
)


def result_fixture() -> dict:
    return {
        "selected_epoch": 2,
        "valid": {"WA": 0.6, "UA": 0.55, "macro_f1": 0.5, "confusion": [[2, 0, 0], [1, 1, 0], [0, 0, 2]]},
        "test": {"WA": 0.5, "UA": 0.4, "macro_f1": 0.3, "confusion": [[1, 0, 0], [0, 1, 1], [0, 0, 2]]},
    }


def records_fixture(epochs: int = 3) -> list[dict]:
    return [
        {
            "epoch": e,
            "lr": 1e-4 * 0.875**e,
            "train": {"loss": 2.0 / e, "kl": 1.0 / e},
            "valid": {"UA": 0.2 * e, "WA": 0.25 * e},
            "seconds": 1.5,
        }
        for e in range(1, epochs + 1)
    ]


def make_job(tmp_path: Path, fold: int = 0) -> FoldJob:
    for name in ("config.json", "manifest.parquet", "folds.parquet"):
        (tmp_path / name).write_text("{}")
    return FoldJob(
        "ravdess",
        fold,
        tmp_path / "config.json",
        tmp_path / "manifest.parquet",
        tmp_path / "folds.parquet",
        str(tmp_path),
        tmp_path / f"fold-{fold}",
        epochs=2,
    )


# --- MLflow helpers -------------------------------------------------------------------------


def test_flatten_params_names_every_leaf_by_its_dotted_path():
    flat = tracking.flatten_params(
        {
            "model": {"backbone": "fbank", "strides": [2, 2]},
            "train": {"lr": 1e-4},
            "labels": ("a", "b"),
            "corpus": None,
        }
    )
    assert flat == {
        "model.backbone": "fbank",
        "model.strides": "[2, 2]",
        "train.lr": "0.0001",
        "labels": '["a", "b"]',
        "corpus": "None",
    }
    long = tracking.flatten_params({"x": "y" * 10000})["x"]
    assert len(long) == tracking.MLFLOW_PARAM_VALUE_LIMIT and long.endswith("…")


def test_epoch_metrics_keep_every_finite_number_at_its_epoch():
    records = records_fixture(3) + [{"epoch": 4, "valid": {"UA": float("nan")}, "note": "text", "flag": True}]
    metrics = tracking.epoch_metrics(records, timestamp_ms=0)
    by_key = {(m.key, m.step): m.value for m in metrics}
    for record in records_fixture(3):
        e = record["epoch"]
        assert by_key[("train.loss", e)] == record["train"]["loss"]
        assert by_key[("valid.UA", e)] == record["valid"]["UA"]
        assert by_key[("lr", e)] == record["lr"]
    assert not any(m.step == 4 for m in metrics), "NaN, text and booleans are not metrics"
    assert "epoch" not in {m.key for m in metrics}


def test_fold_summary_is_mean_and_sample_std():
    rng = np.random.default_rng(0)
    folds = {k: {m: float(rng.uniform()) for m in HEADLINE_METRICS} for k in range(5)}
    summary = fold_summary(folds)
    for m in HEADLINE_METRICS:
        values = [folds[k][m] for k in range(5)]
        assert summary[f"{m}_mean"] == pytest.approx(statistics.fmean(values))
        mean = sum(values) / len(values)
        assert summary[f"{m}_std"] == pytest.approx(
            (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
        )
    assert fold_summary({0: folds[0]})["UA_std"] == 0.0
    with pytest.raises(ValueError, match="no fold results"):
        fold_summary({})


def test_summed_confusion_adds_cells_and_rejects_mixed_shapes():
    a, b = np.arange(9).reshape(3, 3), np.ones((3, 3), dtype=int)
    assert (summed_confusion([a.tolist(), b.tolist()]) == a + b).all()
    with pytest.raises(ValueError, match="one shape"):
        summed_confusion([a, np.ones((2, 2))])


def test_metrics_file_with_a_truncated_last_line_keeps_the_complete_epochs(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps(r) for r in records_fixture(2)]
    path.write_text("\n".join(lines) + '\n{"epoch": 3, "tra')
    assert training_runs.read_metrics_jsonl(path) == records_fixture(2)
    path.write_text('{"epoch": 1\n' + lines[1] + "\n")
    with pytest.raises(ValueError, match="metrics.jsonl:1"):
        training_runs.read_metrics_jsonl(path)


def test_headline_scores_name_what_is_missing():
    assert headline_scores(result_fixture()) == {"WA": 0.5, "UA": 0.4, "macro_f1": 0.3}
    with pytest.raises(ValueError, match="macro_f1"):
        headline_scores({"test": {"WA": 1, "UA": 1}})


# --- fold logging ---------------------------------------------------------------------------


def test_fold_logging_survives_an_outage_and_is_not_repeated(
    local_mlflow, experiment_id, tmp_path, monkeypatch
):
    """The tracking server fails the metric upload (MLflow's own HTTP retries exhausted): the
    call fails; the retry (a Prefect retry of the task) sends everything once, and a third call
    logs nothing twice."""
    job = make_job(tmp_path)
    job.out_dir.mkdir()
    (job.out_dir / "result.json").write_text(json.dumps(result_fixture()))
    records = records_fixture(3)
    (job.out_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    parent = local_mlflow.create_run(experiment_id).info.run_id
    real_log_batch = local_mlflow.log_batch
    failures = {"left": 1}

    def log_batch_with_outage(*args, **kwargs):
        if kwargs.get("metrics") and failures["left"]:
            failures["left"] -= 1
            raise MlflowException("503 tracking server unavailable")
        return real_log_batch(*args, **kwargs)

    monkeypatch.setattr(local_mlflow, "log_batch", log_batch_with_outage)
    with pytest.raises(MlflowException, match="503"):
        log_fold_run(local_mlflow, experiment_id, parent, job.corpus, job.fold, job.out_dir, LABELS)
    child = log_fold_run(local_mlflow, experiment_id, parent, job.corpus, job.fold, job.out_dir, LABELS)
    again = log_fold_run(local_mlflow, experiment_id, parent, job.corpus, job.fold, job.out_dir, LABELS)
    assert again == child and failures["left"] == 0
    run = local_mlflow.get_run(child)
    assert run.data.tags["mlflow.parentRunId"] == parent and run.info.status == "FINISHED"
    history = local_mlflow.get_metric_history(child, "train.loss")
    assert sorted((m.step, m.value) for m in history) == [(r["epoch"], r["train"]["loss"]) for r in records]
    assert run.data.metrics["test.UA"] == 0.4 and run.data.metrics["selected.valid.UA"] == 0.55
    artifacts = {a.path for a in local_mlflow.list_artifacts(child)} | {
        a.path for a in local_mlflow.list_artifacts(child, "figures")
    }
    assert {
        "result.json",
        "metrics.jsonl",
        "figures/confusion.png",
        "figures/training_curves.png",
    } <= artifacts


# --- the worker under torchrun -------------------------------------------------------------


@pytest.fixture
def fake_worker(tmp_path, monkeypatch):
    package = tmp_path / "fakepkg"
    package.mkdir()
    (package / "fake_ser_worker.py").write_text(FAKE_WORKER)
    monkeypatch.setenv("PYTHONPATH", str(package))
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "planted-secret-value")
    return "fake_ser_worker"


@pytest.mark.parametrize(
    ("mode", "error"), [("ok", None), ("bad-data", BadDataError), ("killed", WorkerInfraError)]
)
def test_worker_exit_is_classified_through_torchrun(fake_worker, tmp_path, monkeypatch, mode, error):
    monkeypatch.setenv("FAKE_WORKER_MODE", mode)
    job = make_job(tmp_path)
    lines, epochs = [], []
    if error is None:
        result = run_worker(job, emit=lines.append, on_epoch=epochs.append, module=fake_worker, nproc=1)
        assert json.loads(result.read_text())["test"]["UA"] == 0.4
    else:
        with pytest.raises(error) as raised:
            run_worker(job, emit=lines.append, on_epoch=epochs.append, module=fake_worker, nproc=1)
        assert "fold-0" in str(raised.value)
        if mode == "bad-data":
            assert "empty training split" in str(raised.value)
    assert "epoch 2 done" in lines
    assert epochs and epochs[-1] == 2
    assert "worker sees secret: False" in lines


def test_worker_exit_code_reads_the_root_cause_torchrun_reports():
    summary = "Root Cause (first observed failure):\n[0]:\n  exitcode  : 3 (pid: 5043)\n"
    assert worker_exit_code(1, summary) == 3
    assert worker_exit_code(1, "no summary") == 1
    assert worker_exit_code(0, summary) == 0


def test_worker_environment_has_no_credentials():
    env = worker_env(
        {
            "AWS_SECRET_ACCESS_KEY": "s",
            "AWS_ACCESS_KEY_ID": "k",
            "PREFECT_API_AUTH_STRING": "a",
            "MY_TOKEN": "t",
            "PATH": "/bin",
            "CUDA_VISIBLE_DEVICES": "0",
        }
    )
    # nothing is added but unbuffered output under glibc's own heap policy (the default)
    assert env == {"PATH": "/bin", "CUDA_VISIBLE_DEVICES": "0", "PYTHONUNBUFFERED": "1"}
    # the bounded policy's start-up setting is added (ser_model/allocator.py)
    bounded = worker_env({"PATH": "/bin", "SER_HEAP": "bounded", "AWS_SECRET_ACCESS_KEY": "s"})
    assert bounded == {
        "PATH": "/bin",
        "SER_HEAP": "bounded",
        "PYTHONUNBUFFERED": "1",
        "GLIBC_TUNABLES": HUGE_PAGES_TUNABLE,
    }


def test_process_count_follows_the_environment_then_the_gpus(monkeypatch):
    import ser_model.launch

    for gpus, expected in ((0, 1), (1, 1), (4, 4)):
        monkeypatch.setattr(ser_model.launch, "cuda_device_count", lambda gpus=gpus: gpus)
        assert nproc_per_node({}) == expected, f"{gpus} visible GPUs"
        assert nproc_per_node({"SER_NPROC_PER_NODE": "3"}) == 3, "the variable wins over the GPU count"
        assert nproc_per_node({"SER_NPROC_PER_NODE": ""}) == expected, "an empty variable is unset"
    for bad in ("0", "-2", "two"):
        with pytest.raises(ValueError, match=f"SER_NPROC_PER_NODE={bad}: expected a positive number"):
            nproc_per_node({"SER_NPROC_PER_NODE": bad})


@pytest.mark.slow
def test_a_killed_worker_is_retryable_and_the_rerun_resumes_from_its_checkpoint(tmp_path):
    """Kill the real worker (SIGKILL) right after its first epoch: the launch fails as an
    infrastructure error (Prefect retries those), and the rerun continues at epoch 2."""
    import psutil

    from tests.train.synthetic import expected_selected_epoch, tiny_config, write_synthetic_corpus

    manifest, folds = write_synthetic_corpus(tmp_path / "audio", n_speakers=4, per_class=2)
    job = make_job(tmp_path)
    job = FoldJob(
        job.corpus,
        0,
        job.config_path,
        job.manifest_path,
        job.folds_path,
        str(tmp_path / "audio"),
        job.out_dir,
        epochs=3,
    )
    tiny_config(epochs=3).to_json(job.config_path)
    manifest.to_parquet(job.manifest_path)
    folds.to_parquet(job.folds_path)

    def kill_worker_after_first_epoch(done: int) -> None:
        if done >= 1:
            for process in psutil.Process().children(recursive=True):
                if "ser_model.worker" in " ".join(
                    process.cmdline()
                ) and "torch.distributed.run" not in " ".join(process.cmdline()):
                    process.kill()

    with pytest.raises(WorkerInfraError, match="exit code -9"):
        run_worker(job, emit=lambda line: None, on_epoch=kill_worker_after_first_epoch, nproc=1)
    assert not (job.out_dir / "result.json").exists()
    epochs_before = [r["epoch"] for r in training_runs.read_metrics_jsonl(job.out_dir / "metrics.jsonl")]
    assert epochs_before and epochs_before[0] == 1

    rerun_lines: list[str] = []
    result = run_worker(job, emit=rerun_lines.append, nproc=1)
    history = training_runs.read_metrics_jsonl(job.out_dir / "metrics.jsonl")
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert json.loads(result.read_text())["selected_epoch"] == expected_selected_epoch(history)
    trained = [int(m) for m in re.findall(r"epoch (\d)/3 loss", "\n".join(rerun_lines))]
    assert trained and min(trained) > max(epochs_before), (
        f"rerun trained epochs {trained} again after {epochs_before}"
    )


def test_a_rerun_finds_its_unfinished_parent_run_but_never_a_finished_one(local_mlflow, experiment_id):
    from flows.training_runs import UNFINISHED

    key = {"ser.train_key": "a" * 64}
    run = local_mlflow.create_run(experiment_id, tags=key).info.run_id
    local_mlflow.create_run(experiment_id, tags={"ser.train_key": "b" * 64})
    assert tracking.find_run(local_mlflow, experiment_id, key, statuses=UNFINISHED) == run
    local_mlflow.set_terminated(run, "FAILED")
    assert tracking.find_run(local_mlflow, experiment_id, key, statuses=UNFINISHED) == run
    local_mlflow.set_terminated(run, "FINISHED")
    assert tracking.find_run(local_mlflow, experiment_id, key, statuses=UNFINISHED) is None
    assert tracking.find_run(local_mlflow, experiment_id, key) == run


def test_a_parent_run_records_its_data_and_a_rerun_resumes_it_until_it_finished(local_mlflow, tmp_path):
    """The parent run carries the manifest version it trained on; a failed run is resumed by a rerun
    with the same inputs, a finished one is not; its end is FINISHED or FAILED (and the error raised)."""
    from flows.manifest_version import ManifestVersion
    from flows.training_runs import parent_run_ends, start_parent_run, train_key
    from ser_stack.names import CORPUS_TAG, FINGERPRINT_TAG, TRAIN_KEY_TAG
    from tests.flows.test_storage import tiny_version
    from tests.train.synthetic import tiny_config

    v = tiny_version()
    data = ManifestVersion("ravdess", v["fingerprint"], v["manifest"], v["folds"], v["report"], str(tmp_path))
    config, logger = tiny_config(), logging.getLogger("test")
    first = start_parent_run(local_mlflow, data, "cpu-fbank", config, [0, 1], True)
    assert not first.resumed and first.run_id in first.url
    assert first.parameters() == {"experiment_id": first.experiment_id, "parent_run_id": first.run_id}
    run = local_mlflow.get_run(first.run_id)
    assert (run.data.tags[CORPUS_TAG], run.data.tags[FINGERPRINT_TAG]) == ("ravdess", data.fingerprint)
    key = train_key("ravdess", data.fingerprint, config, [0, 1], True, str(tmp_path))
    assert run.data.tags[TRAIN_KEY_TAG] == key
    assert (
        run.data.params["data.utterances"] == str(len(v["manifest"])) and run.data.params["folds"] == "[0, 1]"
    )
    with (
        pytest.raises(RuntimeError, match="fold-1 failed"),
        parent_run_ends(local_mlflow, first.run_id, logger),
    ):
        raise RuntimeError("fold-1 failed")
    assert local_mlflow.get_run(first.run_id).info.status == "FAILED"

    again = start_parent_run(local_mlflow, data, "cpu-fbank", config, [0, 1], True)
    assert again.resumed and again.run_id == first.run_id
    assert local_mlflow.get_run(first.run_id).info.status == "RUNNING"
    with parent_run_ends(local_mlflow, again.run_id, logger):
        pass
    assert local_mlflow.get_run(first.run_id).info.status == "FINISHED"
    third = start_parent_run(local_mlflow, data, "cpu-fbank", config, [0, 1], True)
    assert not third.resumed and third.run_id != first.run_id


def test_a_fold_on_this_machine_reads_a_folder_root_in_place_and_the_inputs_it_was_given(tmp_path):
    """prepared_fold: the worker's job names the version's folder root (nothing staged), a config and
    tables beside the fold folder equal to what the train run passed, and no feature cache for fbank."""
    import pandas as pd

    from flows.fold_runs import prepared_fold
    from flows.manifest_version import ManifestVersion
    from ser_model.config import SERConfig
    from ser_stack.settings import StackSettings
    from tests.flows.test_storage import tiny_version
    from tests.train.synthetic import tiny_config

    v = tiny_version()
    data = ManifestVersion("ravdess", v["fingerprint"], v["manifest"], v["folds"], v["report"], str(tmp_path))
    settings = StackSettings.from_env({"SER_STATE_DIR": str(tmp_path / "state")})
    out_dir = tmp_path / "runs" / "fold-0"
    with prepared_fold(data, 0, tiny_config(epochs=2), out_dir, settings) as job:
        assert (job.corpus, job.fold, job.audio_root, job.out_dir) == ("ravdess", 0, str(tmp_path), out_dir)
        assert job.epochs == 2 and job.feature_cache_dir is None
        assert SERConfig.from_json(job.config_path).to_dict() == tiny_config(epochs=2).to_dict()
        pd.testing.assert_frame_equal(pd.read_parquet(job.manifest_path), v["manifest"], check_dtype=False)
        assert len(pd.read_parquet(job.folds_path)) == len(v["folds"])
        assert job.config_path.parent == job.manifest_path.parent == tmp_path / "runs" / "fold-0-inputs"
    assert not (tmp_path / "state" / "audio-cache").exists()


def test_selected_folds_are_sorted_once_each_and_checked():
    assert selected_folds(None, [0, 1, 2], "p") == [0, 1, 2]
    assert selected_folds([2, 0, 2], [0, 1, 2], "p") == [0, 2]
    with pytest.raises(ValueError, match=r"fold\(s\) \[5\] not in p; available folds: \[0, 1, 2\]"):
        selected_folds([0, 5], [0, 1, 2], "p")
    with pytest.raises(ValueError, match="no folds to train"):
        selected_folds([], [0, 1, 2], "p")


def test_train_key_changes_with_any_input():
    from flows.training_runs import train_key
    from tests.train.synthetic import tiny_config

    base = ("ravdess", "f" * 64, tiny_config(), [0, 1], True, "/data/ravdess")
    variants = [
        ("iemocap", *base[1:]),
        (base[0], "e" * 64, *base[2:]),
        (*base[:2], tiny_config(epochs=3), *base[3:]),
        (*base[:3], [0], *base[4:]),
        (*base[:4], False, base[5]),
        (*base[:5], "/elsewhere"),
    ]
    keys = {train_key(*v) for v in variants}
    assert train_key(*base) == train_key(*base) and len(keys | {train_key(*base)}) == len(variants) + 1


def test_a_fold_run_spans_the_training_not_the_upload(local_mlflow, experiment_id, tmp_path):
    """The child run is created after the fold trained; it still shows when training began and ended."""
    job = make_job(tmp_path)
    job.out_dir.mkdir()
    (job.out_dir / "result.json").write_text(json.dumps(result_fixture()))
    records = records_fixture(2)
    (job.out_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    start_ms, end_ms = 1_700_000_000_000, 1_700_000_180_000
    write_fold_times(job.out_dir, start_ms, end_ms)
    parent = local_mlflow.create_run(experiment_id).info.run_id
    child = local_mlflow.get_run(
        log_fold_run(local_mlflow, experiment_id, parent, job.corpus, job.fold, job.out_dir, LABELS)
    )
    assert (child.info.start_time, child.info.end_time) == (start_ms, end_ms)


def test_a_release_trained_on_every_speaker_logs_its_curves_without_validation(
    local_mlflow, experiment_id, tmp_path
):
    """``train.release_holdout`` false: result.json has no validation or test metrics and the epochs
    no validation record; the child run still gets its curves and its result, and no score it lacks."""
    job = make_job(tmp_path, fold=RELEASE_FOLD)
    job.out_dir.mkdir()
    result = {"selected_epoch": 3, "valid": {}, "test": {}, "selection_rule": last_epoch_rule(3)}
    (job.out_dir / "result.json").write_text(json.dumps(result))
    records = [{k: v for k, v in r.items() if k != "valid"} for r in records_fixture(3)]
    (job.out_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    parent = local_mlflow.create_run(experiment_id).info.run_id
    child = local_mlflow.get_run(
        log_fold_run(local_mlflow, experiment_id, parent, job.corpus, job.fold, job.out_dir, LABELS)
    )
    assert child.info.run_name == "release" and child.info.status == "FINISHED"
    assert not [m for m in child.data.metrics if m.startswith(("selected.valid.", "test.", "valid."))]
    history = local_mlflow.get_metric_history(child.info.run_id, "train.loss")
    assert [m.step for m in sorted(history, key=lambda m: m.step)] == [1, 2, 3]
    artifacts = {a.path for a in local_mlflow.list_artifacts(child.info.run_id)}
    assert {"result.json", "metrics.jsonl"} <= artifacts


def test_experiments_open_as_training_experiments_with_scores_as_columns(local_mlflow):
    """The tags MLflow's UI reads: the experiment kind, and a shared runs-list view whose columns
    are the scores; an experiment made before the tags existed gets them too."""
    fresh = local_mlflow.get_experiment(tracking.get_or_create_experiment(local_mlflow, "ser-savee"))
    older_id = local_mlflow.create_experiment("ser-iemocap")
    assert tracking.get_or_create_experiment(local_mlflow, "ser-iemocap") == older_id
    for experiment in (fresh, local_mlflow.get_experiment(older_id)):
        assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
        view = json.loads(experiment.tags[f"mlflow.sharedViewState.{mlflow_ui.SCORES_VIEW}"])
        assert {"metrics.`UA_mean`", "metrics.`WA_mean`", "metrics.`test.UA`"} <= set(view["selectedColumns"])
    url = mlflow_ui.experiment_url("http://127.0.0.1:5000/", older_id)
    assert (
        url
        == f"http://127.0.0.1:5000/#/experiments/{older_id}/runs?workflowType=machine_learning&viewStateShareKey=ser-scores"
    )


def test_protocol_name_tells_apart_what_promotion_must_not_compare():
    """Equal inputs give equal names; a different corpus, fold count or set of evaluated folds
    gives a different name, and the name states the corpus and each evaluated fold."""
    base = protocol_name("ravdess", 5, [0, 1])
    assert protocol_name("ravdess", 5, [0, 1]) == base
    variants = [
        protocol_name("savee", 5, [0, 1]),
        protocol_name("ravdess", 4, [0, 1]),
        protocol_name("ravdess", 5, [0]),
        protocol_name("ravdess", 5, [0, 1, 2]),
        protocol_name("ravdess", 5, [1, 2]),
    ]
    assert len({base, *variants}) == 1 + len(variants)
    assert "ravdess" in base and "5 folds" in base and "0,1" in base
    assert "speaker-independent" in base


def test_fold_runs_mode_is_pool_unless_inline_is_asked_for():
    from flows.fold_runs import fold_runs_mode

    assert fold_runs_mode({}) == "pool" and fold_runs_mode({"SER_FOLD_RUNS": ""}) == "pool"
    assert fold_runs_mode({"SER_FOLD_RUNS": "inline"}) == "inline"
    with pytest.raises(ValueError, match=r"SER_FOLD_RUNS='local': expected one of pool, inline"):
        fold_runs_mode({"SER_FOLD_RUNS": "local"})


@pytest.mark.parametrize(
    ("fold", "name"), [(0, "ravdess-fold0"), (3, "ravdess-fold3"), (-1, "ravdess-release")]
)
def test_a_fold_flow_run_is_named_by_its_fold_and_the_release_as_release(monkeypatch, fold, name):
    """What Prefect's UI and the demo's log show for a train-fold flow run (tests/e2e/
    test_train_scale_out.py sees the same names on the pool)."""
    import types

    import flows.train

    run = types.SimpleNamespace(parameters={"corpus": "ravdess", "fold": fold, "root": "/data"})
    monkeypatch.setattr(flows.train, "current_flow_run", run)
    assert flows.train.fold_flow_run_name() == name
