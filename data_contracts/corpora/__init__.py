"""The registry of corpora: one module per corpus, each exporting a `CorpusSpec` as `SPEC`.

A spec holds every fact the pipeline needs about its corpus: name, classes, fold protocol,
audio thresholds, parser, and (in its module's docstring) layout, label map and folds. `SPECS`
maps each name to its spec; the names other modules use (`data_contracts.labels.CORPORA` and
`LABELS`, `data_contracts.audio.AUDIO_CHECKS`) are views of it, and `parse_corpus`, ingest and
`data_contracts.folds.make_folds` look the corpus up in it when they run. Adding a corpus is
writing its module and adding its `SPEC` to `SPECS` (docs/ARCHITECTURE.md, "Adding a corpus").
Table datasets (`data_contracts.corpora.table`, your own recordings) are specs too, whose classes
come from their data: `register` adds one to `SPECS` in the process that ingests or reads it.

Importing this package loads no pandas, numpy or soundfile: the CLI builds its argument choices
from it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, TypeVar

from data_contracts.corpora import iemocap, msp_improv, ravdess, savee
from data_contracts.corpora.base import Candidate, CorpusSpec, ParseResult, QuarantineRow
from data_contracts.errors import CorpusLayoutError, UnknownCorpusError

if TYPE_CHECKING:
    from data_contracts.source import CorpusSource, Listing

SPECS: dict[str, CorpusSpec] = {
    spec.name: spec for spec in (iemocap.SPEC, msp_improv.SPEC, ravdess.SPEC, savee.SPEC)
}
"""Corpus name -> its spec, in the order the CLI lists them; the four corpora, then the table
datasets registered in this process (`register`)."""
OFFICIAL_CORPORA: tuple[str, ...] = tuple(SPECS)
"""The corpora read in their official layouts; their names are reserved."""


def register(dataset_spec: CorpusSpec) -> CorpusSpec:
    """Add (or replace) the spec of a table dataset (`data_contracts.corpora.table`) in `SPECS`,
    so that schemas, folds, presets and flows know its name and classes in this process. The four
    official corpora cannot be replaced (ValueError naming them)."""
    if dataset_spec.name in OFFICIAL_CORPORA:
        raise ValueError(
            f"{dataset_spec.name!r} is an official corpus name; a table dataset needs another "
            f"(reserved: {', '.join(OFFICIAL_CORPORA)})"
        )
    SPECS[dataset_spec.name] = dataset_spec
    return dataset_spec


def spec(corpus: str) -> CorpusSpec:
    """The registered spec of `corpus`; UnknownCorpusError naming the known corpora otherwise."""
    return SPECS[check_corpus(corpus)]


def check_corpus(corpus: str) -> str:
    """`corpus` if it is a registered corpus name: the project's one corpus check (the CLI, the
    presets, the bucket layout and every flow call it); UnknownCorpusError naming the known
    corpora otherwise."""
    if not isinstance(corpus, str) or corpus not in SPECS:
        raise UnknownCorpusError(f"unknown corpus {corpus!r}; expected one of {', '.join(SPECS)}")
    return corpus


T = TypeVar("T")


class CorpusNames(Sequence[str]):
    """The registered corpus names, read from `SPECS` at each use (a corpus registered later
    is in it)."""

    def __getitem__(self, index):
        return tuple(SPECS)[index]

    def __len__(self) -> int:
        return len(SPECS)

    def __iter__(self) -> Iterator[str]:
        return iter(tuple(SPECS))

    def __contains__(self, name) -> bool:
        return name in SPECS

    def __repr__(self) -> str:
        return repr(tuple(SPECS))


class SpecField(Mapping[str, T]):
    """Corpus name -> one field of its spec, read from `SPECS` at each lookup."""

    def __init__(self, read: Callable[[CorpusSpec], T]):
        self._read = read

    def __getitem__(self, corpus: str) -> T:
        return self._read(SPECS[corpus])

    def __iter__(self) -> Iterator[str]:
        return iter(tuple(SPECS))

    def __len__(self) -> int:
        return len(SPECS)

    def __repr__(self) -> str:
        return repr(dict(self))


def parse_corpus(corpus: str, source: CorpusSource, listing: Listing | None = None) -> ParseResult:
    """Parse `source` in the official layout of `corpus`.

    `listing` (default: `source.list_files()`) lets callers list once and reuse it. Entries the
    source refused (symlink escapes, non-UTF-8 names) become quarantine rows. Raises
    CorpusLayoutError for an unknown corpus name, an empty root or a root in another layout.
    """
    parser = spec(corpus).parse
    listing = source.list_files() if listing is None else listing
    if not listing.files and not listing.refused:
        raise CorpusLayoutError(f"{source.root}: the corpus root is empty; nothing to ingest for {corpus}")
    result = parser(listing, source)
    for refused in listing.refused:
        result.quarantine_file(refused.path, refused.reason_code, refused.reason)
    return result


__all__ = [
    "OFFICIAL_CORPORA",
    "SPECS",
    "Candidate",
    "CorpusNames",
    "CorpusSpec",
    "ParseResult",
    "QuarantineRow",
    "SpecField",
    "parse_corpus",
    "register",
    "spec",
]
