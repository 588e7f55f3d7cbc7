"""The ``ser`` console script: ``ser_model.cli``'s command tree, with registry models.

``ser predict|evaluate|export ... --model models:/ser-ravdess@champion`` (or
``models:/NAME/VERSION``) downloads that model from the MLflow tracking server
(``MLFLOW_TRACKING_URI``) into a scratch folder and hands the checkpoint folder inside the
pyfunc to the command; ``ser_model.cli`` parses the command line and calls this module's resolver
for a ``--model`` value that starts with ``models:/``. ``ser tune`` logs its study to MLflow
(flows/tune_tracking.py); ``ser monitor`` reads a registered model's fold-mean UA from the registry.
MLflow is imported only by those, so every other command starts without it.
"""

from __future__ import annotations

import atexit
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ser_model import cli
from ser_model.cli.hooks import ModelSourceError
from ser_stack.names import RUN_KIND_EVALUATION, RUN_KIND_TAG

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

REGISTRY_SCHEME = "models:/"


def checkpoint_folder(model_dir: Path) -> Path:
    """The save_pretrained folder inside a downloaded SER pyfunc model."""
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model

    from flows.pyfunc import CHECKPOINT_ARTIFACT

    try:
        flavor = Model.load(str(model_dir)).flavors["python_function"]
        relative = flavor["artifacts"][CHECKPOINT_ARTIFACT]["path"]
    except (KeyError, OSError, MlflowException) as err:
        raise ModelSourceError(
            f"{model_dir}: not an SER pyfunc model (no '{CHECKPOINT_ARTIFACT}' artifact in its MLmodel): {err}"
        ) from err
    return model_dir / relative


def download_checkpoint(uri: str, dst: Path) -> Path:
    """Download a registry model (``models:/<name>@<alias>`` or ``models:/<name>/<version>``)
    into `dst` and return its checkpoint folder (a ``ser_model.cli.hooks.ModelResolver``)."""
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException

    try:
        model_dir = Path(download_artifacts(artifact_uri=uri, dst_path=str(dst)))
    except (MlflowException, OSError) as err:
        raise ModelSourceError(f"cannot fetch {uri} from the MLflow registry: {err}") from err
    return checkpoint_folder(model_dir)


def registry_version_uri(client: MlflowClient, uri: str) -> str:
    """The registry model ``uri`` names now, as ``models:/NAME/VERSION`` (an alias, ``latest`` or a
    version: ``models:/NAME@ALIAS``, ``models:/NAME/7``); MlflowException when ``client``'s registry
    does not know it."""
    from mlflow.store.artifact.utils.models import get_model_name_and_version

    name, version = get_model_name_and_version(client, uri)
    return f"{REGISTRY_SCHEME}{name}/{version}"


def pinned_model_uri(value: str) -> str:
    """A ``ser_model.cli.hooks.ModelPinner``: ``models:/NAME@ALIAS`` → ``models:/NAME/VERSION``, the
    version the alias names now on the tracking server of the environment; any other value
    unchanged. ModelSourceError naming the URI when the registry does not know it."""
    if not value.startswith(REGISTRY_SCHEME) or "@" not in value:
        return value
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    try:
        return registry_version_uri(client, value)
    except MlflowException as err:
        raise ModelSourceError(
            f"{value}: not in the MLflow registry at {client.tracking_uri}: {err}"
        ) from err


def registered_fold_mean_ua(uri: str) -> float | None:
    """A ``ser_model.cli.hooks.FoldMeanUA``: the cross-validated fold-mean UA the registry records for
    ``models:/<name>@<alias>`` or ``models:/<name>/<version>`` (``flows.promote.version_score``),
    None for a model outside the registry or one whose scores are not recorded."""
    from mlflow.exceptions import MlflowException
    from mlflow.store.artifact.utils.models import get_model_name_and_version
    from mlflow.tracking import MlflowClient

    from flows.promote import version_score

    if not uri.startswith(REGISTRY_SCHEME):
        return None
    client = MlflowClient()
    try:
        name, version = get_model_name_and_version(client, uri)
        return version_score(client, name, version).ua_mean
    except (MlflowException, ValueError) as err:
        print(f"ser monitor: warning: no fold-mean UA recorded for {uri} ({err})", file=sys.stderr)
        return None


def mlflow_tune_tracker(driver, *, root: str, fingerprint: str):
    """`ser tune`'s tracker (a ``ser_model.cli.hooks.TunerTrackerFactory``): the driver's study as
    an MLflow parent run with a child run per trial (flows/tune_tracking.py), on the server of
    ``MLFLOW_TRACKING_URI`` or MLflow's local default."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from flows.tune_tracking import MlflowStudyTracker

    uri = mlflow.get_tracking_uri()
    tracker = MlflowStudyTracker.start(
        MlflowClient(uri), driver, root=root, fingerprint=fingerprint, tracking_uri=uri
    )
    print(f"MLflow tune run {tracker.parent_run_id} at {uri}")
    return tracker


def log_evaluation(experiment: str, run_name: str, params: dict, metrics: dict) -> str:
    """A ``ser_model.cli.hooks.EvaluationLogger`` (``ser evaluate ... --mlflow-experiment NAME``): one
    finished run of the experiment with the evaluation's params, every finite numeric leaf of its
    metrics (``segment.UA``, ``boundary_error_s.median``, ...) and the whole metrics dict as
    ``evaluation.json``. Returns the run's URL."""
    from mlflow import MlflowClient

    from flows import tracking
    from flows.mlflow_ui import run_url

    client = MlflowClient()
    experiment_id = tracking.get_or_create_experiment(client, experiment)
    run_id = client.create_run(
        experiment_id, run_name=run_name, tags={RUN_KIND_TAG: RUN_KIND_EVALUATION}
    ).info.run_id
    given = {k: v for k, v in params.items() if v is not None}
    tracking.log_batch(client, run_id, tracking.epoch_metrics([metrics]), tracking.flatten_params(given))
    client.log_dict(run_id, dict(metrics), "evaluation.json")
    client.set_terminated(run_id)
    return run_url(client.tracking_uri, experiment_id, run_id)


def main(argv: Sequence[str] | None = None) -> int:
    """``ser_model.cli.main`` with ``models:/`` resolved by the registry, `ser tune` studies and
    evaluations tracked in MLflow; returns the exit code."""
    return cli.main(
        argv,
        resolvers={REGISTRY_SCHEME: download_checkpoint},
        tune_tracker=mlflow_tune_tracker,
        evaluation_logger=log_evaluation,
        fold_mean_ua=registered_fold_mean_ua,
        pin_model=pinned_model_uri,
    )


def console() -> None:
    """The ``ser`` console script: :func:`main` as a process that starts and ends at once.

    * ``hypothesis`` is made unimportable: pandera imports it (0.35 s) at its first validation only
      to offer data-synthesis strategies, which no ``ser`` command uses, and skips them without it.
    * After the command, the exit handlers run (logging, MLflow, temporary folders) and the
      standard streams are flushed, then the process ends without tearing down every imported
      module one by one, which took about 1 s after ``ser ingest`` (pandas, pandera, pyarrow) on
      2 cores. Every file the commands write is closed when they return.
    """
    sys.modules.setdefault("hypothesis", None)  # type: ignore[arg-type]
    code = main()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (BrokenPipeError, ValueError):  # a reader that went away (`ser ... | head`), a closed stream
            pass
    os._exit(code)


if __name__ == "__main__":
    console()
