"""Fixtures shared by the flow tests."""

from __future__ import annotations

import boto3
import pytest
from mlflow.tracking import MlflowClient
from moto import mock_aws

from flows.storage import DataBucket

CHECKPOINT_LABELS = ("neutral", "happy", "sad")


@pytest.fixture
def checkpoint(tmp_path):
    """A tiny randomly initialised fbank model's folder (labels :data:`CHECKPOINT_LABELS`), seeded."""
    import torch

    from ser_model.config import LossConfig, ModelConfig, SERConfig
    from ser_model.model import SERModel

    torch.manual_seed(0)
    model = ModelConfig(
        backbone="fbank", n_mels=40, fbank_dim=32, fbank_layers=1, fbank_heads=2, embed_dim=16
    )
    config = SERConfig(
        labels=CHECKPOINT_LABELS, model=model, loss=LossConfig(supcon_proj_dim=16), corpus="ravdess"
    )
    return SERModel(config).eval().save_pretrained(tmp_path / "best")


@pytest.fixture
def local_mlflow(tmp_path, monkeypatch):
    """An MLflow tracking store + registry in a temporary SQLite file, artifacts under tmp_path,
    no server; MLFLOW_TRACKING_URI points at it for code that reads the environment."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    return MlflowClient(uri)


@pytest.fixture
def experiment_id(local_mlflow, tmp_path):
    """A fresh experiment whose artifacts live under tmp_path."""
    return local_mlflow.create_experiment("ser-ravdess", artifact_location=(tmp_path / "artifacts").as_uri())


@pytest.fixture
def bucket(monkeypatch):
    """The data bucket ``ser-data`` on moto's in-process S3 (no endpoint, profile or real credentials)."""
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="ser-data")
        yield DataBucket(client=client, name="ser-data")
