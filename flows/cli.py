"""The ``ser`` console script: ``ser_model.cli``'s command tree, with registry models.

``ser predict|evaluate|export ... --model models:/ser-ravdess@champion`` (or
``models:/NAME/VERSION``) downloads that model from the MLflow tracking server
(``MLFLOW_TRACKING_URI``) into a scratch folder and hands the checkpoint folder inside the
pyfunc to the command; ``ser_model.cli`` parses the command line and calls this module's resolver
for a ``--model`` value that starts with ``models:/``. MLflow is imported only then, so every
other command starts without it.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from ser_model import cli

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
        raise cli.ModelSourceError(
            f"{model_dir}: not an SER pyfunc model (no '{CHECKPOINT_ARTIFACT}' artifact in its MLmodel): {err}"
        ) from err
    return model_dir / relative


def download_checkpoint(uri: str, dst: Path) -> Path:
    """Download a registry model (``models:/<name>@<alias>`` or ``models:/<name>/<version>``)
    into `dst` and return its checkpoint folder (a ``ser_model.cli.ModelResolver``)."""
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException

    try:
        model_dir = Path(download_artifacts(artifact_uri=uri, dst_path=str(dst)))
    except (MlflowException, OSError) as err:
        raise cli.ModelSourceError(f"cannot fetch {uri} from the MLflow registry: {err}") from err
    return checkpoint_folder(model_dir)


def main(argv: Sequence[str] | None = None) -> int:
    """The ``ser`` entry point: ``ser_model.cli.main`` with ``models:/`` resolved by the registry."""
    return cli.main(argv, resolvers={REGISTRY_SCHEME: download_checkpoint})


if __name__ == "__main__":
    sys.exit(main())
