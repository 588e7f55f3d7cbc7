"""Fixtures of the end-to-end tests on the live stack."""

from __future__ import annotations

import uuid

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from data_contracts.labels import LABELS
from flows.pyfunc import log_pyfunc
from ser_model.config import LossConfig, ModelConfig, SERConfig
from ser_model.model import SERModel


@pytest.fixture
def champion(stack, repo_root, tmp_path, monkeypatch) -> str:
    """A small random fbank model for RAVDESS's 8 classes, registered on the live MLflow with the
    alias champion; its models:/ URI. Deleted afterwards."""
    for key, value in stack.client_env().items():
        monkeypatch.setenv(key, value)
    torch.manual_seed(0)
    model = ModelConfig(backbone="fbank", fbank_dim=64, fbank_layers=1, fbank_heads=2, embed_dim=32)
    config = SERConfig(
        labels=LABELS["ravdess"], model=model, loss=LossConfig(supcon_proj_dim=32), corpus="ravdess"
    )
    checkpoint = SERModel(config).eval().save_pretrained(tmp_path / "best")
    name = f"ser-serve-e2e-{uuid.uuid4().hex[:8]}"
    # no mlflow.set_tracking_uri / set_experiment: they outlive the test
    client = MlflowClient(stack.tracking_uri)
    experiment = client.get_experiment_by_name("ser-serve-e2e")
    experiment_id = experiment.experiment_id if experiment else client.create_experiment("ser-serve-e2e")
    with mlflow.start_run(experiment_id=experiment_id):
        version = log_pyfunc(checkpoint, registered_model_name=name).registered_model_version
    client.set_registered_model_alias(name, "champion", str(version))
    yield f"models:/{name}@champion"
    client.delete_registered_model(name)
