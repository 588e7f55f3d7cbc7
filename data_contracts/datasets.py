"""Dataset references: the one place a dataset name is resolved to what the pipeline knows of it.

A dataset is one of the four official corpora (`data_contracts.corpora.OFFICIAL_CORPORA`,
read from their layouts) or a table dataset (`data_contracts.corpora.table`, read from a CSV or
Parquet table, its name chosen by the user). A table dataset's classes come from its data, so its
spec is registered in this process (`data_contracts.corpora.register`) from the report of an
ingest, whenever one of its manifest versions is read (`register_from_report`): from then on it
validates, folds and trains like the corpora.

`DatasetRef` is what flows pass around instead of a bare corpus string: ``resolve_dataset(name)``
checks the name once (an official corpus, or a slug for a table dataset) and says which kind it is.
"""

from __future__ import annotations

from dataclasses import dataclass

from data_contracts.corpora import OFFICIAL_CORPORA, SPECS, register
from data_contracts.corpora.table import DEFAULT_FOLDS, check_dataset_name, table_spec
from data_contracts.errors import IngestError, ManifestError, UnknownCorpusError


@dataclass(frozen=True)
class DatasetRef:
    """A checked dataset name and its kind: ``corpus`` (an official layout, ingested from a root
    folder) or ``table`` (ingested from a labels table)."""

    name: str
    kind: str

    @property
    def is_table(self) -> bool:
        return self.kind == "table"


def resolve_dataset(name: str) -> DatasetRef:
    """The DatasetRef of `name`: an official corpus, or else a table dataset whose name is a slug.
    UnknownCorpusError naming both rules otherwise."""
    if name in OFFICIAL_CORPORA:
        return DatasetRef(name, "corpus")
    try:
        return DatasetRef(check_dataset_name(name), "table")
    except IngestError as err:
        raise UnknownCorpusError(
            f"unknown dataset {name!r}: expected one of the corpora {', '.join(OFFICIAL_CORPORA)} or a "
            f"table dataset's name ({err})"
        ) from None


def register_from_report(report: dict) -> None:
    """Register the spec of the table dataset an ingest report describes (its name, ``labels`` and
    ``fold_count``), so its manifest validates in this process; a corpus report needs nothing.
    ManifestError naming what is missing from a table report."""
    if report.get("kind") != "table":
        return
    labels = report.get("labels")
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) and x for x in labels):
        raise ManifestError(
            f"ingest report of {report.get('corpus')!r}: a table dataset's report needs its labels (a list of names)"
        )
    current = SPECS.get(report["corpus"])
    if current is None or list(current.labels) != sorted(labels):
        register(table_spec(report["corpus"], labels, int(report.get("fold_count") or DEFAULT_FOLDS)))
