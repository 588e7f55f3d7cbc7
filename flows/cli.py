"""The ``ser`` console script: ``ser_model.cli`` plus models from the MLflow registry.

``ser predict|evaluate|export ... --model models:/ser-ravdess@champion`` downloads that
model (tracking server from ``MLFLOW_TRACKING_URI``) into a temporary folder, finds the
checkpoint folder inside the pyfunc, and hands the local folder to ``ser_model.cli.main``.
Every other command line goes to ``ser_model.cli.main`` unchanged.
"""

from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path

from mlflow.artifacts import download_artifacts
from mlflow.exceptions import MlflowException
from mlflow.models import Model

from flows.pyfunc import CHECKPOINT_ARTIFACT

log = logging.getLogger(__name__)

MODEL_COMMANDS = ("predict", "evaluate", "export")
REGISTRY_SCHEME = "models:/"


def model_option(argv: list[str]) -> tuple[int, str] | None:
    """``(index of the value, value)`` of ``--model X`` / ``--model=X`` in ``argv``, or None."""
    for index, arg in enumerate(argv):
        if arg == "--model" and index + 1 < len(argv):
            return index + 1, argv[index + 1]
        if arg.startswith("--model="):
            return index, arg.split("=", 1)[1]
    return None


def with_model(argv: list[str], index: int, folder: Path) -> list[str]:
    """``argv`` with the ``--model`` value at ``index`` replaced by a local folder."""
    replaced = list(argv)
    replaced[index] = f"--model={folder}" if replaced[index].startswith("--model=") else str(folder)
    return replaced


def checkpoint_folder(model_dir: Path) -> Path:
    """The save_pretrained folder inside a downloaded SER pyfunc model."""
    try:
        flavor = Model.load(str(model_dir)).flavors["python_function"]
        relative = flavor["artifacts"][CHECKPOINT_ARTIFACT]["path"]
    except (KeyError, OSError, MlflowException) as err:
        raise ValueError(f"{model_dir}: not an SER pyfunc model (no '{CHECKPOINT_ARTIFACT}' artifact in its MLmodel): {err}") from err
    return model_dir / relative


def download_checkpoint(uri: str, dst: Path) -> Path:
    """Download a registry model (``models:/<name>@<alias>`` or ``models:/<name>/<version>``)
    and return its checkpoint folder."""
    model_dir = Path(download_artifacts(artifact_uri=uri, dst_path=str(dst)))
    return checkpoint_folder(model_dir)


def main(argv: list[str] | None = None) -> int:
    from ser_model.cli import main as library_main

    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((arg for arg in argv if not arg.startswith("-")), None)  # after global flags such as -v
    found = model_option(argv)
    if command not in MODEL_COMMANDS or found is None or not found[1].startswith(REGISTRY_SCHEME):
        return library_main(argv)
    index, uri = found
    with tempfile.TemporaryDirectory(prefix="ser-model-") as tmp:
        try:
            folder = download_checkpoint(uri, Path(tmp))
        except (MlflowException, ValueError, OSError) as err:
            print(f"ser {command}: cannot fetch {uri} from the MLflow registry: {err}", file=sys.stderr)
            return 2
        return library_main(with_model(argv, index, folder))


if __name__ == "__main__":
    sys.exit(main())
