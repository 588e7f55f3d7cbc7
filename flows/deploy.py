"""Apply every deployment of the project: ``python -m flows.deploy``.

| deployment | flow | schedule / trigger | parameters |
|---|---|---|---|
| ingest-<corpus> (×4) | ingest (flows/ingest.py) | on demand | corpus |
| ingest-table | ingest-table (flows/ingest.py) | on demand | name, source (a table; default the Prefect Variable ``ser-root-<name>``), labels, label_map, folds; applies the dataset's train-<name> |
| train-<corpus> (×4) | train (flows/train.py) | event ``ser.manifest.updated`` on ``ser.manifest.<corpus>`` in the data bucket | corpus, manifest_version="latest", preset="cpu-fbank"; the trigger passes the new fingerprint, the preset and the folds (``--auto-train-preset``, ``--auto-train-folds``) |
| train-<dataset> | train | as train-<corpus>; applied by the first ``ingest-table`` run of the dataset (:func:`apply_dataset_deployment`) | corpus=<dataset>, as train-<corpus> |
| retrain-nightly | retrain (flows/retrain.py) | cron ``0 3 * * *`` (SER_RETRAIN_CRON) | none: every corpus with a root and every registered table dataset |
| train-fold | train-fold (flows/train.py) | started by each train run, once per fold and for the release model | corpus, fingerprint, fold, config, root, MLflow experiment and parent run, init (the pinned model to start from, or none) |
| tune-<corpus> (×4) | tune (flows/tune.py) | on demand | corpus, preset="cpu-fbank", trials=20, epochs, folds=[0, 1], space, study |
| tune-trial | tune-trial (flows/tune.py) | started by each tune run, once per trial | corpus, fingerprint, study, base config, space, tuning folds, MLflow parent run |

train-fold and tune-trial run in the pool's work queue ``folds``, whose concurrency limit (``SER_FOLD_CONCURRENCY``,
default 1) is how many folds train at once; the other deployments use the pool's default queue.

All run on the process work pool (``SER_WORK_POOL``, default ``ser-process``) from this
project folder (``flow.from_source`` with the local folder: no image, no git, works offline).
Applying again updates the deployments in place and replaces their automations, so the
command is idempotent. It also creates the one-slot concurrency limits ``train-<corpus>``
that queue the trainings of a corpus (flows/limits.py). Corpus roots are not read here: the
worker finds them at run time (flows/roots.py: the ``root`` parameter, the Prefect Variable
``ser-root-<corpus>``, the worker's ``SER_ROOT_<CORPUS>``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from uuid import UUID

from prefect import deploy
from prefect.deployments.runner import RunnerDeployment
from prefect.events import DeploymentEventTrigger
from prefect.flows import Flow

from data_contracts.corpora import OFFICIAL_CORPORA
from data_contracts.datasets import resolve_dataset
from flows.fold_runs import FOLD_DEPLOYMENT, FOLD_QUEUE
from flows.limits import TRAINING_SLOTS, ensure_limit, training_limit
from flows.trial_runs import TRIAL_DEPLOYMENT
from ser_model.presets import DEFAULT_PRESET
from ser_stack.names import (
    EVENT_BUCKET,
    EVENT_FINGERPRINT,
    INGEST,
    INGEST_TABLE_DEPLOYMENT,
    MANIFEST_UPDATED_EVENT,
    TRAIN,
    TUNE,
    job_name,
    manifest_resource_id,
)
from ser_stack.process_settings import DEFAULT_RETRAIN_CRON, ProcessSettings
from ser_stack.settings import REPO_ROOT, StackSettings, exit_if_bad_environment

log = logging.getLogger(__name__)

ENTRYPOINTS = {
    "ingest": "flows/ingest.py:ingest",
    "ingest-table": "flows/ingest.py:ingest_table",
    "train": "flows/train.py:train",
    "retrain": "flows/retrain.py:retrain",
    "train-fold": "flows/train.py:train_fold",
    "tune": "flows/tune.py:tune",
    "tune-trial": "flows/tune.py:tune_trial",
}
RETRAIN_DEPLOYMENT = "retrain-nightly"
DEFAULT_AUTO_TRAIN_FOLDS: list[int] | None = None
"""Folds the automation trains after a new manifest: None = every fold of the protocol."""


def deployment_names() -> list[str]:
    """Full names ``<flow>/<deployment>`` of everything :func:`build_deployments` creates."""
    return [
        *(f"ingest/ingest-{corpus}" for corpus in OFFICIAL_CORPORA),
        f"ingest-table/{INGEST_TABLE_DEPLOYMENT}",
        *(f"train/train-{corpus}" for corpus in OFFICIAL_CORPORA),
        f"retrain/{RETRAIN_DEPLOYMENT}",
        FOLD_DEPLOYMENT,
        *(f"tune/tune-{corpus}" for corpus in OFFICIAL_CORPORA),
        TRIAL_DEPLOYMENT,
    ]


def manifest_trigger(
    corpus: str,
    data_bucket: str,
    preset: str = DEFAULT_PRESET,
    folds: list[int] | None = DEFAULT_AUTO_TRAIN_FOLDS,
) -> DeploymentEventTrigger:
    """Run train-<corpus> on the manifest version named by a ``ser.manifest.updated`` event
    about a manifest in ``data_bucket`` (the bucket the worker's train flow reads), with the
    recipe ``preset`` on ``folds`` (None: all), both stated in the automation."""
    resolve_dataset(corpus)
    return DeploymentEventTrigger(
        name=f"train-{corpus}-on-new-manifest",
        description=f"train {corpus} when the ingest flow publishes a new manifest fingerprint",
        expect={MANIFEST_UPDATED_EVENT},
        match={"prefect.resource.id": manifest_resource_id(corpus), EVENT_BUCKET: data_bucket},
        parameters={
            "corpus": corpus,
            "manifest_version": f"{{{{ event.resource['{EVENT_FINGERPRINT}'] }}}}",
            "preset": preset,
            "folds": folds,
        },
    )


def configured_retrain_cron() -> str:
    """The cron of :data:`RETRAIN_DEPLOYMENT`: ``SER_RETRAIN_CRON``, else ``DEFAULT_RETRAIN_CRON``
    (`ser_stack.process_settings`; infra/test sets it 12 hours away from its session)."""
    return ProcessSettings.from_env().retrain_cron


def train_deployment(
    train_flow: Flow,
    dataset: str,
    work_pool: str,
    data_bucket: str,
    auto_train_preset: str = DEFAULT_PRESET,
    auto_train_folds: list[int] | None = DEFAULT_AUTO_TRAIN_FOLDS,
) -> RunnerDeployment:
    """``train-<dataset>``: the train flow on the dataset's latest manifest, run again by the
    automation on each new manifest fingerprint of the dataset."""
    return train_flow.to_deployment(
        name=job_name(TRAIN, dataset),
        parameters={"corpus": dataset, "manifest_version": "latest", "preset": DEFAULT_PRESET},
        triggers=[manifest_trigger(dataset, data_bucket, auto_train_preset, auto_train_folds)],
        work_pool_name=work_pool,
        description=f"cross-validated training on {dataset}, registration and promotion",
        tags=["ser", dataset],
    )


def apply_dataset_deployment(
    dataset: str,
    auto_train_preset: str = DEFAULT_PRESET,
    auto_train_folds: list[int] | None = DEFAULT_AUTO_TRAIN_FOLDS,
    source: Path = REPO_ROOT,
) -> str:
    """Create or update a table dataset's ``train-<dataset>`` deployment and its automation (what
    ``ingest-table`` does after checking the table); its full name ``train/train-<dataset>``."""
    settings = StackSettings.from_env()
    train_flow = Flow.from_source(source=str(source), entrypoint=ENTRYPOINTS["train"])
    deployment = train_deployment(
        train_flow,
        resolve_dataset(dataset).name,
        settings.work_pool,
        settings.data_bucket,
        auto_train_preset,
        auto_train_folds,
    )
    deploy(
        deployment,
        work_pool_name=settings.work_pool,
        build=False,
        push=False,
        print_next_steps_message=False,
        ignore_warnings=True,
    )
    return f"train/{job_name(TRAIN, dataset)}"


def build_deployments(
    source: Path = REPO_ROOT,
    work_pool: str | None = None,
    retrain_cron: str | None = None,
    auto_train_preset: str = DEFAULT_PRESET,
    auto_train_folds: list[int] | None = DEFAULT_AUTO_TRAIN_FOLDS,
) -> list[RunnerDeployment]:
    """Every deployment of :func:`deployment_names` (not yet applied), loaded from the project folder ``source``; the
    automation after ingest trains ``auto_train_preset`` on ``auto_train_folds`` (None: all)."""
    settings = StackSettings.from_env()
    work_pool = work_pool or settings.work_pool
    retrain_cron = retrain_cron or configured_retrain_cron()
    flows = {
        name: Flow.from_source(source=str(source), entrypoint=entrypoint)
        for name, entrypoint in ENTRYPOINTS.items()
    }
    deployments = []
    for corpus in OFFICIAL_CORPORA:
        deployments.append(
            flows["ingest"].to_deployment(
                name=job_name(INGEST, corpus),
                parameters={"corpus": corpus},
                work_pool_name=work_pool,
                description=f"ingest {corpus} into a checked manifest version in S3",
                tags=["ser", corpus],
            )
        )
    deployments.append(
        flows["ingest-table"].to_deployment(
            name=INGEST_TABLE_DEPLOYMENT,
            parameters={"auto_train_preset": auto_train_preset, "auto_train_folds": auto_train_folds},
            work_pool_name=work_pool,
            description="ingest a table dataset (--param name=NAME --param source=TABLE) and apply its train-<name>",
            tags=["ser"],
        )
    )
    for corpus in OFFICIAL_CORPORA:
        deployments.append(
            train_deployment(
                flows["train"], corpus, work_pool, settings.data_bucket, auto_train_preset, auto_train_folds
            )
        )
    deployments.append(
        flows["retrain"].to_deployment(
            name=RETRAIN_DEPLOYMENT,
            cron=retrain_cron,
            work_pool_name=work_pool,
            description="re-fingerprint every configured corpus; ingest and train those that changed",
            tags=["ser"],
        )
    )
    deployments.append(
        flows["train-fold"].to_deployment(
            name=FOLD_DEPLOYMENT.split("/")[1],
            work_pool_name=work_pool,
            work_queue_name=FOLD_QUEUE,
            description="one fold (or the release model) of a train run; started by the train flow",
            tags=["ser"],
        )
    )
    for corpus in OFFICIAL_CORPORA:
        deployments.append(
            flows["tune"].to_deployment(
                name=job_name(TUNE, corpus),
                parameters={"corpus": corpus, "preset": DEFAULT_PRESET},
                work_pool_name=work_pool,
                description=f"Optuna study of a {corpus} recipe on validation speakers; writes the best as a preset file",
                tags=["ser", corpus],
            )
        )
    deployments.append(
        flows["tune-trial"].to_deployment(
            name=TRIAL_DEPLOYMENT.split("/")[1],
            work_pool_name=work_pool,
            work_queue_name=FOLD_QUEUE,
            description="one trial of a tuning study; started by the tune flow",
            tags=["ser"],
        )
    )
    return deployments


def fold_concurrency(env: dict[str, str] | None = None) -> int:
    """How many folds train at once: ``SER_FOLD_CONCURRENCY`` of ``env`` (default: this process's),
    unset 1 (a 2-core machine)."""
    return ProcessSettings.from_env(env).fold_concurrency


def ensure_fold_queue(work_pool: str, slots: int) -> None:
    """Create the pool's ``folds`` queue, or set its concurrency limit to ``slots``."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            queue = client.read_work_queue_by_name(FOLD_QUEUE, work_pool_name=work_pool)
        except ObjectNotFound:
            client.create_work_queue(FOLD_QUEUE, work_pool_name=work_pool, concurrency_limit=slots)
            return
        if queue.concurrency_limit != slots:
            client.update_work_queue(queue.id, concurrency_limit=slots)


def apply_deployments(deployments: list[RunnerDeployment], work_pool: str | None = None) -> list[UUID]:
    """Create or update the deployments (and their automations) on the Prefect API, and the
    training concurrency limits when missing."""
    for corpus in OFFICIAL_CORPORA:
        ensure_limit(training_limit(corpus), TRAINING_SLOTS)
    work_pool = work_pool or StackSettings.from_env().work_pool
    ensure_fold_queue(work_pool, fold_concurrency())
    return deploy(
        *deployments,
        work_pool_name=work_pool,
        build=False,
        push=False,
        print_next_steps_message=False,
        ignore_warnings=True,
    )


def parse_folds(text: str) -> list[int] | None:
    """``all`` → None; ``0,1`` → [0, 1]; anything else is refused naming what is expected."""
    if text == "all":
        return None
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected all or fold numbers like 0 or 0,1") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.deploy", description="apply every SER deployment")
    parser.add_argument("--work-pool", help="work pool name (default: SER_WORK_POOL or ser-process)")
    parser.add_argument(
        "--retrain-cron",
        help=f"cron of {RETRAIN_DEPLOYMENT} (default: SER_RETRAIN_CRON or '{DEFAULT_RETRAIN_CRON}')",
    )
    parser.add_argument(
        "--auto-train-preset",
        default=DEFAULT_PRESET,
        help=f"recipe the automation trains after ingest (default {DEFAULT_PRESET})",
    )
    parser.add_argument(
        "--auto-train-folds",
        default="all",
        type=parse_folds,
        help="folds the automation trains after ingest: all (default) or numbers like 0 or 0,1",
    )
    args = parser.parse_args(argv)
    exit_if_bad_environment(parser.prog)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    deployments = build_deployments(
        work_pool=args.work_pool,
        retrain_cron=args.retrain_cron,
        auto_train_preset=args.auto_train_preset,
        auto_train_folds=args.auto_train_folds,
    )
    apply_deployments(deployments, args.work_pool)
    for name in deployment_names():
        print(f"applied {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
