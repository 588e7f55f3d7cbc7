"""How people see the project's runs in MLflow's UI: the experiment tags that open it as a training
experiment with the scores as columns, and the addresses of an experiment, a run and a model."""

from __future__ import annotations

import json

from ser_model.metrics import summary_name

SCORES_VIEW = "ser-scores"
"""Name of the runs-list view, stored on every experiment, that shows the scores as columns."""
SCORE_COLUMNS = (
    *(summary_name(m, "mean") for m in ("UA", "WA", "macro_f1")),
    summary_name("UA", "std"),
    "test.UA",
    "test.WA",
)
"""Parent runs carry the fold means, fold child runs their own test scores."""
EXPERIMENT_TAGS = {
    # MLflow 3 opens an experiment in GenAI mode (traces, "Detect Issues") unless told it is a
    # training experiment: by this tag, and in 3.17's UI by ?workflowType=machine_learning.
    "mlflow.experimentKind": "custom_model_development",
    # a shared view of the runs list (opened with ?viewStateShareKey=ser-scores): UA/WA columns
    f"mlflow.sharedViewState.{SCORES_VIEW}": json.dumps(
        {"selectedColumns": [f"metrics.`{m}`" for m in SCORE_COLUMNS]}
    ),
}
TRAINING_UI = "workflowType=machine_learning"


def experiment_url(tracking_uri: str, experiment_id: str) -> str:
    """MLflow UI address of an experiment's runs list, in training mode, scores as columns."""
    return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs?{TRAINING_UI}&viewStateShareKey={SCORES_VIEW}"


def run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """MLflow UI address of one run, in training mode."""
    return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}?{TRAINING_UI}"


def model_url(tracking_uri: str, name: str) -> str:
    """MLflow UI address of a registered model (its versions and aliases), in training mode."""
    return f"{tracking_uri.rstrip('/')}/#/models/{name}?{TRAINING_UI}"
