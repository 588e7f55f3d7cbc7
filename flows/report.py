"""What a training left in the registry, and where to look next: ``python -m flows.report CORPUS``.

infra/demo ends with it (infra/ runs flows as commands, never imports them): the champion's
version and mean UA, and the addresses of the MLflow runs, the registered model and the Prefect UI.
"""

from __future__ import annotations

import argparse
import os
import sys

from mlflow import MlflowClient

from data_contracts.labels import LABELS
from flows.promote import UA_TAG, registered_model_name
from flows.tracking import experiment_url, model_url


def report(corpus: str, tracking_uri: str) -> str:
    """The champion of ``ser-<corpus>`` (its mean test UA against chance) and the MLflow addresses to open."""
    client = MlflowClient(tracking_uri)
    name = registered_model_name(corpus)
    champion = client.get_model_version_by_alias(name, "champion")
    experiment = client.get_experiment_by_name(f"ser-{corpus}")
    ua = champion.tags.get(UA_TAG)
    ua_text = f"{100 * float(ua):.1f} %" if ua else "n/a"
    chance = 100 / len(LABELS[corpus])
    return (
        f"{name}@champion: version {champion.version}, test UA {ua_text} on held-out speakers (chance: {chance:.1f} %), run {champion.run_id}\n"
        f"  MLflow runs: {experiment_url(tracking_uri, experiment.experiment_id)}\n"
        f"  MLflow model: {model_url(tracking_uri, name)}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flows.report", description="the champion of a corpus and where to look"
    )
    parser.add_argument("corpus")
    args = parser.parse_args(argv)
    print(report(args.corpus, os.environ["MLFLOW_TRACKING_URI"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
