"""Fixtures shared by the flow tests."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient


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
