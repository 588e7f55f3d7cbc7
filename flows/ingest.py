"""The ``ingest`` flow: corpus root → checked manifest version in S3 → ``latest`` → artifact; and
the ``ingest-table`` flow, the same for a table dataset (docs/YOUR_DATA.md).

Deployments ``ingest-<corpus>`` and ``ingest-table`` run them (see flows/deploy.py). The work itself is
``data_contracts.ingest.run_ingest`` (parse, validate, decode and check every file, folds,
report) and ``flows.storage.publish_manifest`` (write under the fingerprint, read back, move
``latest``); this module adds retries on S3 connection errors, the Prefect markdown artifact
``ingest-<corpus>`` and the ``ser.manifest.updated`` event that the retraining automation
listens to.

Bad data is never retried: a ``CorpusLayoutError`` (or any other data-contract error) fails the
flow with its own message. An S3 outage fails the publication task after its retries with a
``StorageUnavailableError``; ``latest`` then still names the previous version and a rerun
completes the publication.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event
from prefect.logging.handlers import APILogHandler

from data_contracts.corpora.table import DEFAULT_FOLDS
from data_contracts.datasets import resolve_dataset
from data_contracts.ingest import IngestResult, report_markdown, run_ingest
from data_contracts.table_ingest import run_table_ingest
from flows.roots import remember_source, resolve_root
from flows.storage import DataBucket, Publication, StorageUnavailableError, publish_manifest
from ser_model.presets import DEFAULT_PRESET
from ser_stack.names import (
    EVENT_BUCKET,
    EVENT_CORPUS,
    EVENT_FINGERPRINT,
    INGEST,
    MANIFEST_UPDATED_EVENT,
    TRAIN,
    job_name,
    manifest_resource_id,
)
from ser_stack.settings import StackSettings

LIBRARY_LOGGERS = ("data_contracts", "flows.storage")
PUBLISH_RETRY_DELAYS_S = (2, 8)
PROGRESS_LOG_INTERVAL_S = 5.0


@contextmanager
def library_logs_to_prefect(names: tuple[str, ...] = LIBRARY_LOGGERS) -> Iterator[None]:
    """Send INFO records of the library loggers ``names`` to the current Prefect run's log."""
    handler = APILogHandler()
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.removeHandler(handler)
            logger.setLevel(level)


class ProgressToLog(io.TextIOBase):
    """A stream for tqdm bars that logs the latest bar line at most every ``interval_s``
    seconds, and always the last one (the bar's final state), so progress shows in the run log."""

    def __init__(
        self, logger: logging.Logger | logging.LoggerAdapter, interval_s: float = PROGRESS_LOG_INTERVAL_S
    ):
        self.logger = logger
        self.interval_s = interval_s
        self.last_logged = float("-inf")
        self.pending = ""

    def write(self, text: str) -> int:
        lines = [part.strip() for part in text.replace("\r", "\n").split("\n") if part.strip()]
        if lines:
            self.pending = lines[-1]
            if time.monotonic() - self.last_logged >= self.interval_s:
                self.flush_line()
        return len(text)

    def flush_line(self) -> None:
        if self.pending:
            self.logger.info(self.pending)
            self.pending = ""
            self.last_logged = time.monotonic()


@contextmanager
def progress_to_log(logger: logging.Logger | logging.LoggerAdapter) -> Iterator[None]:
    """Route progress bars (written to stderr) into ``logger`` while the block runs."""
    stream = ProgressToLog(logger)
    try:
        with redirect_stderr(stream):
            yield
    finally:
        stream.flush_line()


def is_s3_connection_failure(task, task_run, state) -> bool:
    """Retry condition: only S3 connection failures are worth another try."""
    return isinstance(state.result(raise_on_failure=False), StorageUnavailableError)


@task(name="parse-and-check", cache_policy=NO_CACHE)
def parse_and_check(corpus: str, root: str, workers: int | None) -> IngestResult:
    """Parse the corpus layout, decode and check every file, build manifest, folds and report."""
    with library_logs_to_prefect(), progress_to_log(get_run_logger()):
        return run_ingest(corpus, root, workers=workers, progress=True)


@task(
    name="publish-manifest",
    cache_policy=NO_CACHE,
    retries=len(PUBLISH_RETRY_DELAYS_S),
    retry_delay_seconds=list(PUBLISH_RETRY_DELAYS_S),
    retry_condition_fn=is_s3_connection_failure,
)
def publish(corpus: str, root: str, result: IngestResult) -> Publication:
    """Write the version under its fingerprint, read it back, then move ``latest``."""
    with library_logs_to_prefect():
        return publish_manifest(
            corpus,
            result.fingerprint,
            result.manifest,
            result.quarantine,
            result.folds,
            result.report,
            root,
            DataBucket.from_env(),
        )


def artifact_markdown(publication: Publication, report: dict) -> str:
    """The ``ingest-<corpus>`` artifact: what happened to ``latest``, then the ingest report."""
    if publication.status == "unchanged":
        head = (
            f"**Unchanged**: manifest `{publication.fingerprint}` is already complete and `latest`; "
            "nothing was written."
        )
    else:
        head = (
            f"**Published** manifest `{publication.fingerprint}`; `latest` moved from "
            f"`{publication.previous or 'none'}`."
        )
    return f"# Ingest of {publication.corpus}\n\n{head}\n\n{report_markdown(report)}"


@flow(name="ingest")
def ingest(corpus: str, root: str | None = None, workers: int | None = None, announce: bool = True) -> dict:
    """Ingest one corpus root (a folder or ``s3://bucket/prefix``) into a manifest version.

    ``root`` defaults to the Prefect Variable ``ser-root-<corpus>``, else the worker's
    ``SER_ROOT_<CORPUS>`` (flows/roots.py). With ``announce`` (default) a newly published
    version emits the ``ser.manifest.updated`` event on resource ``ser.manifest.<corpus>``
    (labels ``ser.fingerprint``, ``ser.bucket``), which starts training through the deployment
    trigger; callers that train themselves (the ``retrain`` flow, the demo, tests) pass
    ``announce=False``.
    Returns ``{"status": "published" | "unchanged", "corpus", "fingerprint", "previous",
    "utterances", "quarantined"}``.
    """
    logger = get_run_logger()
    root, place = resolve_root(corpus, root)
    logger.info("ingesting %s from %s (%s)", corpus, root, place)
    result = parse_and_check(corpus, root, workers)
    return publish_and_announce(corpus, root, result, announce)


def publish_and_announce(dataset: str, root: str, result: IngestResult, announce: bool) -> dict:
    """Publish `result` (audio paths relative to `root`), write the ``ingest-<dataset>`` artifact
    and, when a new version was published and `announce` holds, emit ``ser.manifest.updated``.
    Returns the flow's outcome dict."""
    logger = get_run_logger()
    publication = publish(dataset, root, result)
    create_markdown_artifact(
        key=job_name(INGEST, dataset),
        markdown=artifact_markdown(publication, result.report),
        description=f"ingest of {dataset}: {publication.status} {publication.fingerprint}",
    )
    outcome = {
        "status": publication.status,
        "corpus": dataset,
        "fingerprint": publication.fingerprint,
        "previous": publication.previous,
        "utterances": len(result.manifest),
        "quarantined": len(result.quarantine),
    }
    if publication.status == "unchanged":
        logger.info(
            "unchanged: manifest %s of %s is already latest; nothing written",
            publication.fingerprint,
            dataset,
        )
    else:
        logger.info(
            "published manifest %s of %s (previous %s)",
            publication.fingerprint,
            dataset,
            publication.previous,
        )
        if announce:
            emit_event(
                event=MANIFEST_UPDATED_EVENT,
                resource={
                    "prefect.resource.id": manifest_resource_id(dataset),
                    EVENT_CORPUS: dataset,
                    EVENT_FINGERPRINT: publication.fingerprint,
                    EVENT_BUCKET: StackSettings.from_env().data_bucket,
                },
                payload={k: v for k, v in outcome.items() if k != "status"},
            )
    return outcome


@task(name="read-and-check-table", cache_policy=NO_CACHE)
def read_and_check_table(
    name: str,
    source: str,
    labels: list[str] | None,
    label_map: dict[str, str] | None,
    folds: int,
    workers: int | None,
) -> IngestResult:
    """Read the table, check every row and its audio, fold by speaker (or its split column)."""
    with library_logs_to_prefect(), progress_to_log(get_run_logger()):
        return run_table_ingest(source, name, labels, label_map, folds, workers=workers, progress=True)


@flow(name="ingest-table")
def ingest_table(
    name: str,
    source: str | None = None,
    labels: list[str] | None = None,
    label_map: dict[str, str] | None = None,
    folds: int = DEFAULT_FOLDS,
    workers: int | None = None,
    announce: bool = True,
    auto_train_preset: str = DEFAULT_PRESET,
    auto_train_folds: list[int] | None = None,
) -> dict:
    """Ingest the table dataset ``name`` from ``source`` (a .csv/.parquet path or s3:// URL; default:
    the Prefect Variable ``ser-root-<name>``, which a given ``source`` sets) into a manifest version,
    then apply its deployment ``train-<name>`` (its automation trains ``auto_train_preset`` on
    ``auto_train_folds`` after a new manifest, like the corpora's) so that ``prefect deployment run
    train-<name>`` works. ``labels``, ``label_map`` and ``folds`` are ``ser ingest table``'s options.
    Returns the ``ingest`` flow's outcome, plus ``deployment``."""
    from flows.deploy import apply_dataset_deployment

    logger = get_run_logger()
    dataset = resolve_dataset(name)
    if not dataset.is_table:
        raise ValueError(f"{name} is an official corpus: run its deployment ingest-{name}")
    source, place = resolve_root(name, source)
    logger.info("ingesting table dataset %s from %s (%s)", name, source, place)
    result = read_and_check_table(name, source, labels, label_map, folds, workers)
    deployment = apply_dataset_deployment(name, auto_train_preset, auto_train_folds)
    logger.info("applied %s: `prefect deployment run %s` trains %s", deployment, job_name(TRAIN, name), name)
    outcome = publish_and_announce(name, result.report["root"], result, announce)
    remember_source(name, source)
    return {**outcome, "deployment": deployment}
