"""What a training left in the registry, and where to look next: ``python -m flows.report CORPUS``;
and the train flow's summary for people (:func:`summary_markdown`, its Prefect artifact).

infra/demo ends with it (infra/ runs flows as commands, never imports them): the champion's
version and mean UA, and the addresses of the MLflow runs, the registered model and the Prefect UI.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from mlflow import MlflowClient

from data_contracts.labels import LABELS
from flows.mlflow_ui import experiment_url, model_url
from flows.promote import UA_TAG
from ser_model.metrics import HEADLINE_METRICS, headline_scores, summary_name
from ser_stack.names import CHAMPION, experiment_name, registered_model_name
from ser_stack.settings import StackSettings

if TYPE_CHECKING:
    from flows.manifest_version import ManifestVersion


def report(corpus: str, tracking_uri: str) -> str:
    """The champion of ``ser-<corpus>`` (its mean test UA against chance) and the MLflow addresses to open."""
    client = MlflowClient(tracking_uri)
    name = registered_model_name(corpus)
    champion = client.get_model_version_by_alias(name, CHAMPION)
    experiment = client.get_experiment_by_name(experiment_name(corpus))
    ua = champion.tags.get(UA_TAG)
    ua_text = f"{100 * float(ua):.1f} %" if ua else "n/a"
    chance = 100 / len(LABELS[corpus])
    return (
        f"{name}@{CHAMPION}: version {champion.version}, test UA {ua_text} on held-out speakers (chance: {chance:.1f} %), run {champion.run_id}\n"
        f"  MLflow runs: {experiment_url(tracking_uri, experiment.experiment_id)}\n"
        f"  MLflow model: {model_url(tracking_uri, name)}"
    )


def summary_markdown(
    data: ManifestVersion,
    outcomes: list[dict[str, Any]],
    summary: dict[str, float],
    version: str | None,
    decision: dict | None,
    rule: str,
) -> str:
    """The train flow's Prefect artifact for a training on ``data``: per-fold and mean ± std scores,
    selection rule, the registered ``version`` and the promotion ``decision``."""
    rows = "\n".join(
        f"| {o['fold']} | "
        + " | ".join(f"{headline_scores(o['result'])[m]:.4f}" for m in HEADLINE_METRICS)
        + " |"
        for o in outcomes
    )
    mean = " | ".join(
        f"{summary[summary_name(m, 'mean')]:.4f} ± {summary[summary_name(m, 'std')]:.4f}"
        for m in HEADLINE_METRICS
    )
    header = "| fold | " + " | ".join(HEADLINE_METRICS) + " |\n|---|" + "---|" * len(HEADLINE_METRICS)
    text = f"# Training {data.corpus}\n\ndata fingerprint `{data.fingerprint}`\n\n{header}\n{rows}\n| mean ± std | {mean} |\n\nCheckpoint selection: {rule}.\n"
    if version is not None:
        text += f"\nRegistered `{registered_model_name(data.corpus)}` version {version}."
    if decision is not None:
        text += f" Promotion: {decision['reason']}."
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flows.report", description="the champion of a corpus and where to look"
    )
    parser.add_argument("corpus")
    args = parser.parse_args(argv)
    print(report(args.corpus, StackSettings.from_env().tracking_uri))
    return 0


if __name__ == "__main__":
    sys.exit(main())
