"""Ingest a table dataset: read the table, check every row and its audio, fold, build the tables.

`run_table_ingest` returns the same `IngestResult` as a corpus ingest (manifest, quarantine,
folds, report, fingerprint; `data_contracts.ingest.write_ingest_outputs` writes the same four
files) and registers the dataset's spec in this process. The table format, the reasons a row is
quarantined and the fold protocol are in `data_contracts.corpora.table`.

Refusals (IngestError, nothing written): a bad dataset name, ``fold_count`` below 3, a table that
cannot be read or lacks a column, no row naming a speaker, fewer than 3 speakers among the usable
rows (all three unless the table has a ``split`` column), a split column that gives one speaker
two roles or leaves a role empty, no usable row at all.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING

from data_contracts.corpora import register
from data_contracts.corpora.base import ParseResult
from data_contracts.corpora.table import (
    DEFAULT_FOLDS,
    MIN_SPEAKERS,
    OPTIONAL_COLUMNS,
    REQUIRED_COLUMNS,
    SPLITS,
    TABLE_CHECKS,
    Table,
    TableRows,
    check_dataset_name,
    read_table,
    table_rows,
    table_spec,
)
from data_contracts.errors import IngestError
from data_contracts.ingest import IngestResult, accept, assemble_ingest, quarantine_table
from data_contracts.probing import probe_all

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)


def _speaker_folds(table_name: str, manifest: pd.DataFrame) -> tuple[pd.DataFrame, None]:
    """The label-stratified speaker folds of the registered spec; IngestError with fewer than
    MIN_SPEAKERS speakers (saying that a split column is the way out)."""
    from data_contracts.folds import make_folds, natural_key

    speakers = sorted(manifest["speaker"].unique(), key=natural_key)
    if len(speakers) < MIN_SPEAKERS:
        raise IngestError(
            f"{table_name}: {len(speakers)} speaker(s) among the usable rows ({', '.join(speakers)}); "
            f"speaker-independent folds need at least {MIN_SPEAKERS} (test, validation and training "
            "speakers). Add recordings of more speakers, or a split column (train/valid/test) for a given protocol"
        )
    return make_folds(manifest), None


def _split_folds(table_name: str, split_of_utt: Mapping[str, str], manifest: pd.DataFrame) -> tuple:
    """Fold 0 of the table's split column; IngestError when a speaker has rows in two splits or a
    split holds no usable row."""
    from data_contracts.folds import given_split_folds

    splits = manifest["utt_id"].map(split_of_utt)
    roles = splits.groupby(manifest["speaker"]).unique()
    mixed = {speaker: sorted(r) for speaker, r in roles.items() if len(r) > 1}
    if mixed:
        shown = "; ".join(f"{s}: {', '.join(r)}" for s, r in sorted(mixed.items())[:10])
        raise IngestError(
            f"{table_name}: the split column puts {len(mixed)} speaker(s) in several splits ({shown}); "
            "a split is by speaker: give each speaker's rows one split"
        )
    empty = [split for split in SPLITS if not (splits == split).any()]
    if empty:
        raise IngestError(
            f"{table_name}: the split column has no usable row in {', '.join(empty)}; "
            f"training needs rows in each of {', '.join(SPLITS)}"
        )
    return given_split_folds({speaker: r[0] for speaker, r in roles.items()}), None


def _checked_rows(table: Table, rows: TableRows, name: str, workers, progress) -> tuple[list[dict], list]:
    """The manifest rows (with ``metadata``) of the candidates whose audio passes the checks, and
    the quarantine rows of the others, each reason starting with its table row. IngestError when
    no row is usable, counting the reasons."""
    logger.info("%s: %d rows, %d candidate utterances", table.name, len(table.frame), len(rows.candidates))
    outcomes = probe_all(
        table.source, rows.candidates, TABLE_CHECKS, workers, progress, desc=f"ingest {name}"
    )
    origins = [f"{table.name} row {n}: " for n in rows.rows]
    accepted, rejected = accept(rows.candidates, outcomes, origins)
    if not accepted:
        reasons = Counter(q.reason_code for q in rows.quarantine + rejected)
        raise IngestError(
            f"{table.name}: no usable row ({len(table.frame)} rows; quarantined by reason: "
            f"{', '.join(f'{k}: {v}' for k, v in sorted(reasons.items())) or 'none'})"
        )
    metadata: dict[str, str] = {}  # of the first candidate of each utt_id: the one `accept` keeps
    for candidate, value in zip(rows.candidates, rows.metadata):
        metadata.setdefault(candidate.utt_id, value)
    for row in accepted:
        row["metadata"] = metadata[row["utt_id"]]
    return accepted, rejected


def run_table_ingest(
    table: str | os.PathLike | Table,
    name: str,
    labels: Sequence[str] | None = None,
    label_map: Mapping[str, str] | None = None,
    fold_count: int = DEFAULT_FOLDS,
    workers: int | None = None,
    progress: bool = True,
) -> IngestResult:
    """Ingest the table at `table` (a path or s3:// URL, or a `Table` already built, e.g. from a
    folder layout) as dataset `name`. `labels` restricts the classes, `label_map` merges labels,
    `fold_count` is k of the speaker k-fold. Registers the dataset's spec (its classes are the
    manifest's labels, sorted). Raises IngestError for the refusals of the module doc."""
    check_dataset_name(name)
    if not isinstance(fold_count, int) or fold_count < MIN_SPEAKERS:
        raise IngestError(
            f"--folds {fold_count!r}: expected an integer >= {MIN_SPEAKERS} (each fold needs a test, "
            "a validation and a training group of speakers)"
        )
    table = read_table(os.fspath(table)) if isinstance(table, (str, os.PathLike)) else table
    if not table.has_split and not any(str(s).strip() for s in table.frame["speaker"]):
        raise IngestError(
            f"{table.name}: no row names a speaker, and without speakers no speaker-independent "
            "fold can be made; fill the speaker column (for `ser ingest folders`, give --speaker-pattern "
            "with a named group speaker), or add a split column (train/valid/test)"
        )
    rows = table_rows(table, name, labels, label_map)
    accepted, rejected = _checked_rows(table, rows, name, workers, progress)
    register(table_spec(name, {row["label"] for row in accepted}, fold_count))
    quarantine = quarantine_table(rows.quarantine + rejected)
    if table.has_split:
        split_of_utt: dict[str, str] = {}
        for candidate, split in zip(rows.candidates, rows.splits):
            split_of_utt.setdefault(candidate.utt_id, split)
        fold_table = partial(_split_folds, table.name, split_of_utt)
    else:
        fold_table = partial(_speaker_folds, table.name)
    result = assemble_ingest(
        name,
        table.source,
        rows.listing,
        ParseResult(name),
        accepted,
        quarantine,
        len(rows.candidates),
        fold_table,
    )
    result.report.update(
        table=table.name,
        fold_count=fold_count,
        given_split=table.has_split,
        label_map=dict(label_map or {}),
        labels_requested=sorted(labels) if labels else None,
        metadata_columns=[c for c in table.frame.columns if c not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS],
    )
    return result
