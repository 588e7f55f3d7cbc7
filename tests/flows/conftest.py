"""Fixtures shared by the flow tests."""

from __future__ import annotations

import boto3
import pytest
from mlflow.tracking import MlflowClient
from moto import mock_aws

from flows.storage import DataBucket


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
