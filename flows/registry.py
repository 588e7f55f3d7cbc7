"""New versions in MLflow's model registry, made so that the tracking database refuses nothing.

``mlflow.register_model`` (and ``log_model(registered_model_name=...)``, which calls it) first tries
to create the registered model every time and lets the server refuse it when it exists: the client
goes on, but the database logs the refused INSERT (an ERROR line in PostgreSQL's log for every
version after the first, which the stack's log scan counts as a fault). :func:`create_model_version`
looks the name up first and creates the registered model only when it is absent.

A version's description is its model card (ser_model/model_card.py) followed by the promotion
decision (flows/promote.py): :func:`version_description` puts them together within the tracking
database's limit on a description.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, RESOURCE_DOES_NOT_EXIST, ErrorCode
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

__all__ = ["create_model_version", "logged_model_id", "version_description", "MAX_DESCRIPTION"]

LOGGED_MODEL_PREFIX = "models:/m-"
"""How the uri of a logged model (``log_model``'s ``ModelInfo.model_uri``) starts, in MLflow 3."""


MAX_DESCRIPTION = 5000
"""The most characters a model version's description holds (MLflow's ``model_versions.description``
column, String(5000); PostgreSQL refuses a longer one)."""
CARD_CUT = "\n\n(The card is cut here to fit the registry; the whole card is MODEL_CARD.md in the model's artifacts.)\n"


def version_description(card: str, decision: str) -> str:
    """A version's description: its model ``card`` then the promotion ``decision`` (markdown), the
    card cut (said so) when both exceed :data:`MAX_DESCRIPTION`; the decision is never cut."""
    text = "\n\n".join(part.strip() for part in (card, decision) if part.strip()) + "\n"
    if len(text) <= MAX_DESCRIPTION:
        return text
    room = max(MAX_DESCRIPTION - len(decision) - len(CARD_CUT) - 2, 0)
    return f"{card[:room].rstrip()}{CARD_CUT}\n{decision.strip()}\n"[:MAX_DESCRIPTION]


def logged_model_id(model_uri: str) -> str | None:
    """The logged model's id in its uri ``models:/m-…``; None for any other uri (a registered
    model's ``models:/name/1``, an artifact location)."""
    if not model_uri.startswith(LOGGED_MODEL_PREFIX) or "/" in model_uri[len("models:/") :]:
        return None
    return model_uri[len("models:/") :]


def ensure_registered_model(client: MlflowClient, name: str) -> None:
    """Create registered model ``name`` unless it exists; one created meanwhile by another process
    (two flows registering their first version at once) is taken as it is."""
    if client.search_registered_models(filter_string=f"name = '{name}'"):
        return
    try:
        client.create_registered_model(name)
    except MlflowException as err:
        if err.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
            raise


def create_model_version(
    client: MlflowClient,
    name: str,
    model_uri: str,
    tags: Mapping[str, str] | None = None,
    description: str | None = None,
) -> str:
    """The number of a new version of registered model ``name`` (created when absent) whose source
    is ``model_uri``, with ``tags`` and ``description`` (cut to :data:`MAX_DESCRIPTION`). For a logged model's uri the version passes on the model's id, and
    the logged model's ``mlflow.modelVersions`` tag lists the version (the MLflow UI shows it on the
    model's page), as ``mlflow.register_model`` does."""
    ensure_registered_model(client, name)
    model_id = logged_model_id(model_uri)
    version = client.create_model_version(
        name,
        model_uri,
        tags=dict(tags or {}),
        description=version_description(description, "") if description else None,
        model_id=model_id,
    )
    if model_id is not None:
        try:
            logged = client.get_logged_model(model_id)
        except MlflowException as err:
            if err.error_code != ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
                raise
        else:
            listed = json.loads(logged.tags.get(MLFLOW_MODEL_VERSIONS, "[]"))
            listed.append({"name": name, "version": version.version})
            client.set_logged_model_tags(model_id, {MLFLOW_MODEL_VERSIONS: json.dumps(listed)})
    return str(version.version)
