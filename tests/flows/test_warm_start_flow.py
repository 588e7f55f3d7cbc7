"""The train flows' ``init`` below the flows, without servers: an alias pinned to a version once
(flows/warm_start.py), the parent run's train key and ``ser.init`` tag, and a fold's worker handed
the fetched model (flows/fold_runs.py), from a real MLflow registry in a SQLite file."""

from __future__ import annotations

import json

import mlflow
import pytest
import torch

from flows.fold_runs import prepared_fold
from flows.manifest_version import ManifestVersion
from flows.pyfunc import log_pyfunc
from flows.training_runs import start_parent_run, train_key
from flows.warm_start import fetched_init, pinned_init
from ser_model.model import SERModel
from ser_stack.names import INIT_TAG, registered_model_name
from ser_stack.settings import StackSettings
from tests.flows.test_storage import tiny_version
from tests.train.synthetic import tiny_config


def registered_versions(experiment_id: str, checkpoint, count: int) -> list[int]:
    """Register ``checkpoint`` ``count`` times as ``ser-ravdess``; the versions, in order."""
    versions = []
    for _ in range(count):
        with mlflow.start_run(experiment_id=experiment_id):
            info = log_pyfunc(checkpoint, registered_model_name=registered_model_name("ravdess"))
        versions.append(int(info.registered_model_version))
    return versions


def test_an_alias_is_pinned_to_the_version_it_names_when_the_run_starts(
    local_mlflow, experiment_id, checkpoint, tmp_path, monkeypatch
):
    first, second = registered_versions(experiment_id, checkpoint, 2)
    local_mlflow.set_registered_model_alias("ser-ravdess", "champion", str(first))
    assert pinned_init(local_mlflow, "models:/ser-ravdess@champion") == f"models:/ser-ravdess/{first}"
    local_mlflow.set_registered_model_alias("ser-ravdess", "champion", str(second))
    assert pinned_init(local_mlflow, "models:/ser-ravdess@champion") == f"models:/ser-ravdess/{second}"
    assert pinned_init(local_mlflow, f"models:/ser-ravdess/{first}") == f"models:/ser-ravdess/{first}"
    assert pinned_init(local_mlflow, None) is None
    monkeypatch.chdir(checkpoint.parent)
    assert pinned_init(local_mlflow, checkpoint.name) == str(checkpoint)
    with pytest.raises(
        ValueError, match=r"init models:/ser-ravdess@no-such-alias: not in the MLflow registry"
    ):
        pinned_init(local_mlflow, "models:/ser-ravdess@no-such-alias")


def test_a_fold_fetches_the_pinned_model_and_hands_its_weights_to_the_worker(
    local_mlflow, experiment_id, checkpoint, tmp_path
):
    """prepared_fold with a registry init: the worker's --init folder holds the registered
    model's weights (equal tensors), --init-source names the pinned URI; a folder is passed as it is."""
    (version,) = registered_versions(experiment_id, checkpoint, 1)
    uri = f"models:/ser-ravdess/{version}"
    v = tiny_version()
    data = ManifestVersion("ravdess", v["fingerprint"], v["manifest"], v["folds"], v["report"], str(tmp_path))
    settings = StackSettings.from_env({"SER_STATE_DIR": str(tmp_path / "state")})
    out_dir = tmp_path / "runs" / "fold-0"
    with prepared_fold(data, 0, tiny_config(epochs=2), out_dir, settings, uri) as job:
        assert job.init_source == uri and job.init_dir.is_relative_to(tmp_path / "runs" / "fold-0-inputs")
        args = job.worker_args()
        assert args[args.index("--init") + 1] == str(job.init_dir)
        assert args[args.index("--init-source") + 1] == uri
        fetched, source = SERModel.from_pretrained(job.init_dir), SERModel.from_pretrained(checkpoint)
        assert fetched.labels == source.labels
        for key, value in source.state_dict().items():
            assert torch.equal(fetched.state_dict()[key], value), key
    assert fetched_init(str(checkpoint), tmp_path / "unused") == checkpoint
    assert not (tmp_path / "unused").exists()
    with prepared_fold(data, 0, tiny_config(epochs=2), out_dir, settings) as job:
        assert job.init_dir is None and "--init" not in job.worker_args()


def test_the_parent_run_names_its_start_and_another_start_is_another_job(local_mlflow, tmp_path):
    v = tiny_version()
    data = ManifestVersion("ravdess", v["fingerprint"], v["manifest"], v["folds"], v["report"], str(tmp_path))
    config = tiny_config()
    base = ("ravdess", data.fingerprint, config, [0], True, str(tmp_path))
    keys = {
        train_key(*base),
        train_key(*base, "models:/ser-ravdess/1"),
        train_key(*base, "models:/ser-ravdess/2"),
    }
    assert len(keys) == 3 and train_key(*base, None) == train_key(*base)

    started = start_parent_run(local_mlflow, data, "cpu-fbank", config, [0], True, "models:/ser-ravdess/1")
    scratch = start_parent_run(local_mlflow, data, "cpu-fbank", config, [0], True)
    assert started.run_id != scratch.run_id
    assert local_mlflow.get_run(started.run_id).data.tags[INIT_TAG] == "models:/ser-ravdess/1"
    assert INIT_TAG not in local_mlflow.get_run(scratch.run_id).data.tags


def test_ser_train_init_from_the_registry_starts_from_the_registered_model(
    local_mlflow, experiment_id, tmp_path, capsys
):
    """The `ser` console script resolves ``--init models:/…@champion`` like ``--model``: the fold
    starts from the registered model (same classes: the head copied), and result.json and the
    terminal name the version the alias named (models:/ser-ravdess/<version>), not the alias."""
    from dataclasses import replace

    from data_contracts.labels import LABELS
    from flows.cli import main
    from tests.fixtures.corpora import make_ravdess, ser_ingest

    make_ravdess(tmp_path / "corpus", actors=range(1, 9), per_actor=2)
    assert ser_ingest(tmp_path / "corpus", tmp_path / "ingested") == 0
    config = replace(tiny_config(epochs=1), labels=LABELS["ravdess"])
    config.to_json(tmp_path / "tiny.json")
    torch.manual_seed(0)
    SERModel(config).save_pretrained(tmp_path / "champion")
    (version,) = registered_versions(experiment_id, tmp_path / "champion", 1)
    local_mlflow.set_registered_model_alias("ser-ravdess", "champion", str(version))
    capsys.readouterr()
    argv = [
        "train",
        "--manifest",
        str(tmp_path / "ingested"),
        "--fold",
        "0",
        "--config",
        str(tmp_path / "tiny.json"),
    ]
    uri = "models:/ser-ravdess@champion"
    assert main([*argv, "--init", uri, "--out", str(tmp_path / "fold0")]) in (0, None), (
        capsys.readouterr().err
    )
    pinned = f"models:/ser-ravdess/{version}"
    assert f"started from {pinned}: copied backbone, flam, head" in capsys.readouterr().out
    record = json.loads((tmp_path / "fold0" / "result.json").read_text())["init"]
    assert (record["source"], record["head"], record["source_labels"]) == (
        pinned,
        "copied",
        list(config.labels),
    )
    assert main([*argv, "--init", "models:/ser-ravdess@no-such-alias", "--out", str(tmp_path / "x")]) == 2
    assert "models:/ser-ravdess@no-such-alias" in capsys.readouterr().err
