"""The release model of a training: logged as a pyfunc model on its child run, registered once as
``ser-<corpus>`` from the parent run with the scores of the evaluated folds, then promoted
(flows/promote.py decides between it and the champion).

The registered version's description is the release's model card (ser_model/model_card.py) built
from the release's result.json and the evaluated folds' (their test figures, mean calibration and
threshold table) and the recipe; its tag :data:`THRESHOLDS_TAG` holds the threshold table pooled over
the folds' test speakers, so that a user picks ``min_confidence`` from evidence."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
from mlflow.tracking import MlflowClient
from prefect import get_run_logger

from flows.promote import promote, register_release
from flows.pyfunc import log_pyfunc
from ser_model.calibration import threshold_table
from ser_model.config import SERConfig
from ser_model.launch import BEST_FOLDER, RELEASE_FOLD
from ser_model.metrics import headline_scores
from ser_model.model_card import model_card
from ser_stack.names import MODEL_URI_TAG, THRESHOLDS_TAG, registered_model_name

if TYPE_CHECKING:
    from flows.manifest_version import ManifestVersion


def log_release_model(client: MlflowClient, run_id: str, out_dir: Path) -> None:
    """The checkpoint the release fold's folder ``out_dir`` selected, as a pyfunc model of its
    child run (flows/pyfunc.py), its URI tagged :data:`MODEL_URI_TAG` for the parent to register."""
    mlflow.set_tracking_uri(client.tracking_uri)
    with mlflow.start_run(run_id=run_id):
        info = log_pyfunc(out_dir / BEST_FOLDER)
    client.set_tag(run_id, MODEL_URI_TAG, info.model_uri)


def release_card(
    corpus: str,
    released: dict[str, Any],
    folds: list[dict[str, Any]],
    config: SERConfig,
    recipe: dict[str, Any],
) -> str:
    """The model card of ``corpus``'s registered version: the release's result.json, judged by the ``folds``'
    outcomes (`flows.training_runs.fold_outcome`), with its ``recipe`` (preset and overrides)."""
    return model_card(
        released["result"],
        config.to_dict(),
        folds={o["fold"]: o["result"] for o in folds},
        recipe=recipe,
        title=f"{registered_model_name(corpus)} release",
    )


def threshold_tags(folds: list[dict[str, Any]]) -> dict[str, str]:
    """:data:`THRESHOLDS_TAG`: the threshold table of the coverage counts the folds' outcomes
    recorded on their test speakers, as JSON (none when no fold recorded them)."""
    coverages = [
        o["result"]["calibration"]["coverage"]
        for o in folds
        if "coverage" in o["result"].get("calibration", {})
    ]
    return {THRESHOLDS_TAG: json.dumps(threshold_table(coverages))} if coverages else {}


def register_and_promote(
    client: MlflowClient,
    parent_run_id: str,
    finished: list[dict[str, Any]],
    data: ManifestVersion,
    summary: dict[str, float],
    config: SERConfig,
    margin: float,
    monitor_quote: str | None,
    recipe: dict[str, Any] | None = None,
) -> tuple[str, dict]:
    """(version, decision): the release among the ``finished`` fold outcomes registered (once: a
    rerun finds its version) with the UA of every other fold on the test speakers of ``data``'s
    fold table, its model card and threshold table (module docstring), then the ``promote`` flow's
    decision, quoting the monitor."""
    released = next(o for o in finished if o["fold"] == RELEASE_FOLD)
    folds = [o for o in finished if o["fold"] != RELEASE_FOLD]
    ua_by_fold = {o["fold"]: headline_scores(o["result"])["UA"] for o in folds}
    version, new = register_release(
        client,
        parent_run_id,
        released["model_uri"],
        ua_by_fold,
        data.folds,
        summary,
        config.labels,
        card=release_card(data.corpus, released, folds, config, recipe or {}),
        release_tags=threshold_tags(folds),
    )
    get_run_logger().info(
        "release model %s %s version %s",
        "registered as" if new else "already registered by an earlier attempt as",
        registered_model_name(data.corpus),
        version,
    )
    return version, promote(data.corpus, version, margin=margin, monitor_quote=monitor_quote)
