"""How a train run runs its folds: each a ``train-fold`` flow run on the work pool, or inline.

``pool`` (the default): one flow run of the ``train-fold`` deployment per fold (and the release
model), submitted with ``run_deployment`` to the pool's ``folds`` queue, whose concurrency is how
many folds train at once (``SER_FOLD_CONCURRENCY`` at deploy time; on Kubernetes each is a Job with
its own GPUs, given by :func:`fold_job_variables`). The train run waits for them.

``inline`` (``SER_FOLD_RUNS=inline``): each fold is a subflow of the train run, in its process,
one after another. No worker or deployment is needed: a train run called from Python (a notebook,
a test that injects faults into the fold's worker) behaves as on the pool otherwise.

Either way a fold's outcome is read back from its MLflow child run, so the train run aggregates
what every worker shares, and the folds that failed are named together at the end (a rerun with
the same inputs trains only those).

On the machine that trains it, a fold's worker gets its job from :func:`prepared_fold`: the
manifest version's audio local, the fold's inputs written beside its folder, the feature cache
shared through S3 (flows/feature_store.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlflow.tracking import MlflowClient
from prefect import get_run_logger
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment

from flows.feature_store import shared_feature_cache
from flows.training_runs import fold_outcome, fold_run
from flows.warm_start import fetched_init
from ser_model.config import SERConfig
from ser_model.launch import CONFIG_FILE, FoldJob, fold_folder_name
from ser_stack.names import fold_flow_run_name
from ser_stack.process_settings import ProcessSettings
from ser_stack.settings import StackSettings

if TYPE_CHECKING:
    from flows.manifest_version import ManifestVersion

FOLD_DEPLOYMENT = "train-fold/train-fold"
FOLD_QUEUE = "folds"


def fold_runs_mode(env: Mapping[str, str] | None = None) -> str:
    """``SER_FOLD_RUNS`` of ``env`` (default: this process's): ``pool`` (unset) or ``inline``;
    another value is a ValueError naming both choices."""
    return ProcessSettings.from_env(env).fold_runs


def fold_job_variables(corpus: str, fold: int, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Job variables of one fold's flow run: its name, plus the JSON object in
    ``SER_FOLD_JOB_VARIABLES`` (e.g. ``{"gpus": 4, "image": "registry/ser:0.1"}`` for the
    Kubernetes template in infra/k8s/, where each fold is a Job with its own GPUs)."""
    extra = ProcessSettings.from_env(env).fold_job_variables
    return {"name": fold_flow_run_name(corpus, fold_folder_name(fold)), **extra}


def selected_folds(requested: list[int] | None, available: list[int], where: str) -> list[int]:
    """The folds to train, sorted and each once (all ``available`` when None); unknown folds or
    none at all raise ValueError naming ``where`` and the available folds."""
    folds = list(available) if requested is None else sorted({int(k) for k in requested})
    unknown = sorted(set(folds) - set(available))
    if unknown:
        raise ValueError(f"fold(s) {unknown} not in {where}; available folds: {available}")
    if not folds:
        raise ValueError(
            f"no folds to train; expected a non-empty subset of {available} (promotion compares their UA)"
        )
    return folds


@contextmanager
def prepared_fold(
    data: ManifestVersion,
    fold: int,
    config: SERConfig,
    out_dir: Path,
    settings: StackSettings,
    init: str | None = None,
) -> Iterator[FoldJob]:
    """The job of ``fold``'s worker on this machine: the audio of ``data`` in a local folder
    (staged from an ``s3://`` root), the config and the manifest and fold tables written beside
    ``out_dir``, the model to start from (``init``, flows/warm_start.py) fetched beside them, the
    shared feature cache pulled before the block and pushed after it succeeds."""
    audio_root = data.local_audio_root(settings.state_dir)
    if audio_root != data.root:
        get_run_logger().info(
            "staged %d files of %s into %s (sha256 verified)", len(data.manifest), data.corpus, audio_root
        )
    (inputs := out_dir.with_name(out_dir.name + "-inputs")).mkdir(parents=True, exist_ok=True)
    config.to_json(inputs / CONFIG_FILE)
    tables = data.write_tables(inputs)
    init_dir = fetched_init(init, inputs / "init") if init else None
    with shared_feature_cache(config, settings, data.manifest["sha256"]) as cache:
        yield FoldJob(
            data.corpus,
            fold,
            inputs / CONFIG_FILE,
            *tables,
            audio_root,
            out_dir,
            config.train.epochs,
            cache,
            init_dir,
            init,
        )


POLL_S = 1.0
"""How often a train or tune flow reads the state of a fold or trial run it waits for: one small API
read a second, against a run of tens of seconds at the least (at 5 s a training lost 2.5 s a wait
on average)."""


def wait_until_final(api: Any, flow_run_id: Any, poll_s: float = POLL_S) -> Any:
    """The flow run ``flow_run_id`` once its state is final, read every ``poll_s`` seconds (``api``: a sync Prefect client)."""
    while not (final := api.read_flow_run(flow_run_id)).state.is_final():
        time.sleep(poll_s)
    return final


def run_folds(
    client: MlflowClient,
    folds: list[int],
    parameters: dict[str, Any],
    fold_flow: Callable[..., str],
    poll_s: float = POLL_S,
) -> list[dict[str, Any]]:
    """Train ``folds`` (pool or inline, :func:`fold_runs_mode`), each with ``parameters`` plus its
    fold; return their outcomes read back from MLflow. ``fold_flow`` is the ``train-fold`` flow
    (called directly when inline). Raises RuntimeError naming every fold that did not complete."""
    logger = get_run_logger()

    def outcome(k: int) -> dict[str, Any]:
        run = fold_run(client, parameters["experiment_id"], parameters["parent_run_id"], k)[0]
        return fold_outcome(client, run)

    outcomes, failed = [], []
    if fold_runs_mode() == "inline":
        for k in folds:
            try:
                fold_flow(**parameters, fold=k)
            except Exception as err:  # noqa: BLE001 - every fold runs; the failures are raised together
                logger.error("%s failed: %s", fold_folder_name(k), err)
                failed.append(f"{fold_folder_name(k)} ({type(err).__name__}: {err})")
            else:
                outcomes.append(outcome(k))
    else:
        corpus = parameters["corpus"]
        runs = {
            k: run_deployment(
                FOLD_DEPLOYMENT,
                parameters={**parameters, "fold": k},
                timeout=0,
                job_variables=fold_job_variables(corpus, k),
            )
            for k in folds
        }
        with get_client(sync_client=True) as api:
            for k, run in runs.items():
                final = wait_until_final(api, run.id, poll_s)
                logger.info("%s: flow run %s %s", fold_folder_name(k), final.name, final.state.name)
                if final.state.is_completed():
                    outcomes.append(outcome(k))
                else:
                    failed.append(f"{fold_folder_name(k)} ({final.name}: {final.state.message})")
    if failed:
        raise RuntimeError(
            f"fold run(s) did not complete: {'; '.join(failed)}; a rerun with the same inputs trains only those"
        )
    return outcomes
