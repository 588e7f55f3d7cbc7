"""The train flows' ``init``: the model a training starts from (ser_model/warm_start.py), named by a
registry URI (``models:/ser-ravdess@champion``, ``models:/ser-ravdess/7``) or a model folder.

The train run pins it once (:func:`pinned_init`: an alias becomes the version it names now), so that
every fold, a retry and a rerun start from the same weights even if the alias moves meanwhile, and
the parent run's train key and ``ser.init`` tag name that version. Each fold's machine then fetches
it into the fold's inputs (:func:`fetched_init`) and hands the folder to the worker (``--init``).
"""

from __future__ import annotations

from pathlib import Path

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from flows.cli import REGISTRY_SCHEME, download_checkpoint, registry_version_uri

__all__ = ["pinned_init", "fetched_init"]


def pinned_init(client: MlflowClient, init: str | None) -> str | None:
    """``init`` with a registry alias replaced by the version it names now
    (``models:/NAME@ALIAS`` → ``models:/NAME/VERSION``), a folder made absolute (a fold's process
    may run elsewhere in the tree); a version URI or None unchanged. ValueError naming the URI
    when the registry does not know it."""
    if init is None:
        return None
    if not init.startswith(REGISTRY_SCHEME):
        return str(Path(init).absolute())
    try:
        return registry_version_uri(client, init)
    except MlflowException as err:
        raise ValueError(f"init {init}: not in the MLflow registry at {client.tracking_uri}: {err}") from err


def fetched_init(init: str, folder: Path) -> Path:
    """The model folder ``init`` names on this machine: a registry model downloaded into ``folder``
    (its checkpoint inside the pyfunc), a folder as it is (the worker refuses one that holds no model)."""
    if init.startswith(REGISTRY_SCHEME):
        return download_checkpoint(init, folder)
    return Path(init)
