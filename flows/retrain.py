"""The ``retrain`` flow: retrain a dataset only when its source changed.

For each corpus with a root (parameter ``roots``, else the places flows/roots.py looks at) and
each registered table dataset (a Prefect Variable ``ser-root-<name>`` naming its table), the flow
re-fingerprints the source cheaply (``data_contracts.fingerprint.source_fingerprint`` for a
root, ``data_contracts.corpora.table.table_source_fingerprint`` for a table: relative path,
size, mtime or ETag; no decoding) and compares it with what it saw last time (``manifests/<corpus>/source.json`` in
the data bucket). Then:

* same root and source fingerprint → nothing runs; the decision says so;
* changed → the ``ingest`` flow (``ingest-table`` for a table dataset; a subflow, ``announce=False`` so the event automation does
  not start a second training) → if the manifest fingerprint differs from the one trained
  last time, the ``train`` flow (a subflow; it registers the model and runs promotion) →
  ``source.json`` is updated only after both succeeded, so a failed run is retried by the
  next one.

Every decision is logged and published as the markdown artifact ``retrain``. A corpus that
fails does not stop the others; the flow fails at the end, naming each failed corpus.

The deployment ``retrain-nightly`` runs this flow on a cron schedule (flows/deploy.py).
"""

from __future__ import annotations

from datetime import UTC, datetime

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from data_contracts.corpora import OFFICIAL_CORPORA
from data_contracts.corpora.table import table_source_fingerprint
from data_contracts.datasets import resolve_dataset
from data_contracts.fingerprint import source_fingerprint
from data_contracts.source import open_source
from flows.ingest import ingest, ingest_table
from flows.roots import CorpusRootNotFound, registered_datasets, resolve_root, root_env_var, root_variable
from flows.storage import DataBucket, read_source_state, write_source_state
from flows.train import train
from ser_model.presets import DEFAULT_PRESET


class RetrainError(RuntimeError):
    """One or more corpora failed to retrain; the message names each with its error."""


@task(name="fingerprint-source", cache_policy=NO_CACHE)
def fingerprint_source(dataset: str, root: str) -> str:
    """Cheap fingerprint of the dataset's source (listing or stat only, no decoding): the files
    under a corpus's ``root``; a table dataset's table and the files it lists."""
    if resolve_dataset(dataset).is_table:
        return table_source_fingerprint(root, dataset)
    return source_fingerprint(open_source(root))


def ingest_dataset(dataset: str, root: str) -> dict:
    """The ingest subflow of the dataset's kind, not announced (the retrain trains itself)."""
    if resolve_dataset(dataset).is_table:
        return ingest_table(name=dataset, source=root, announce=False)
    return ingest(corpus=dataset, root=root, announce=False)


def source_unchanged(previous: dict | None, root: str, fingerprint: str) -> bool:
    """True when the last recorded state saw the same root with the same source fingerprint."""
    return (
        previous is not None
        and previous.get("root") == root
        and previous.get("source_fingerprint") == fingerprint
    )


def retrain_corpus(
    corpus: str,
    root: str,
    bucket: DataBucket,
    preset: str,
    backbone: str | None,
    overrides: dict | None,
    folds: list[int] | None,
    force: bool,
) -> str:
    """Run one corpus through fingerprint → (ingest → train) and return the decision, in words."""
    logger = get_run_logger()
    current = fingerprint_source(corpus, root)
    previous = read_source_state(corpus, bucket)
    if not force and source_unchanged(previous, root, current):
        return f"unchanged: source fingerprint {current[:12]} of {root} as last seen {previous.get('checked_at')}"
    logger.info(
        "%s: source %s changed (was %s); ingesting",
        corpus,
        current[:12],
        (previous or {}).get("source_fingerprint"),
    )
    outcome = ingest_dataset(corpus, root)
    manifest = outcome["fingerprint"]
    if not force and previous is not None and previous.get("manifest_fingerprint") == manifest:
        decision = f"manifest unchanged ({manifest[:12]}): files were touched but no utterance changed; not retrained"
    else:
        logger.info("%s: training on manifest %s", corpus, manifest)
        trained = train(
            corpus=corpus,
            manifest_version=manifest,
            preset=preset,
            backbone=backbone,
            overrides=overrides,
            folds=folds,
        )
        decision = f"retrained on manifest {manifest[:12]} ({outcome['status']}): {trained}"
    write_source_state(
        corpus,
        {
            "root": root,
            "source_fingerprint": current,
            "manifest_fingerprint": manifest,
            "checked_at": datetime.now(UTC).isoformat(),
        },
        bucket,
    )
    return decision


def decisions_markdown(decisions: dict[str, str]) -> str:
    rows = "\n".join(f"| {corpus} | {decision} |" for corpus, decision in decisions.items())
    return f"# Retraining decisions\n\n| corpus | decision |\n|---|---|\n{rows}\n"


@flow(name="retrain")
def retrain(
    corpora: list[str] | None = None,
    roots: dict[str, str] | None = None,
    preset: str = DEFAULT_PRESET,
    backbone: str | None = None,
    overrides: dict | None = None,
    folds: list[int] | None = None,
    force: bool = False,
) -> dict[str, str]:
    """Retrain each dataset of ``corpora`` (default: the four corpora and every registered table
    dataset) whose source changed since last time.

    ``roots`` maps a corpus to its root (folder or ``s3://bucket/prefix``); missing entries
    come from the Prefect Variable ``ser-root-<corpus>``, else the worker's ``SER_ROOT_<CORPUS>``
    (flows/roots.py). Corpora with no root are skipped, and say so. ``force``
    ingests and trains even when nothing changed. Returns the decision per corpus.
    """
    logger = get_run_logger()
    bucket = DataBucket.from_env()
    decisions: dict[str, str] = {}
    failures: dict[str, str] = {}
    for corpus in corpora or [*OFFICIAL_CORPORA, *registered_datasets()]:
        resolve_dataset(corpus)
        try:
            root, _ = resolve_root(corpus, (roots or {}).get(corpus))
        except CorpusRootNotFound:
            decisions[corpus] = (
                f"skipped: no root configured (pass roots, or set the Prefect variable {root_variable(corpus)} "
                f"or the worker's {root_env_var(corpus)})"
            )
        else:
            try:
                decisions[corpus] = retrain_corpus(
                    corpus, root, bucket, preset, backbone, overrides, folds, force
                )
            except Exception as exc:  # noqa: BLE001 - one corpus failing must not stop the others
                failures[corpus] = f"{type(exc).__name__}: {exc}"
                decisions[corpus] = f"failed: {failures[corpus]}"
        logger.info("%s: %s", corpus, decisions[corpus])
    create_markdown_artifact(
        key="retrain", markdown=decisions_markdown(decisions), description="retraining decisions"
    )
    if failures:
        raise RetrainError("; ".join(f"{corpus}: {error}" for corpus, error in failures.items()))
    return decisions
