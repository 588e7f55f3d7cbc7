"""One parser per corpus, each reading the corpus's official layout; `parse_corpus` dispatches.

Each module documents at its top the layout, the label map and the fold protocol.
"""

from __future__ import annotations

from collections.abc import Callable

from data_contracts.corpora import iemocap, msp_improv, ravdess, savee
from data_contracts.corpora.base import Candidate, ParseResult, QuarantineRow
from data_contracts.errors import CorpusLayoutError
from data_contracts.source import CorpusSource, Listing

PARSERS: dict[str, Callable[[Listing, CorpusSource], ParseResult]] = {
    "iemocap": iemocap.parse,
    "msp-improv": msp_improv.parse,
    "ravdess": ravdess.parse,
    "savee": savee.parse,
}


def parse_corpus(corpus: str, source: CorpusSource, listing: Listing | None = None) -> ParseResult:
    """Parse `source` in the official layout of `corpus`.

    `listing` (default: `source.list_files()`) lets callers list once and reuse it. Entries the
    source refused (symlink escapes, non-UTF-8 names) become quarantine rows. Raises
    CorpusLayoutError for an unknown corpus name, an empty root or a root in another layout.
    """
    if corpus not in PARSERS:
        raise CorpusLayoutError(f"unknown corpus {corpus!r}; expected one of {', '.join(PARSERS)}")
    listing = source.list_files() if listing is None else listing
    if not listing.files and not listing.refused:
        raise CorpusLayoutError(f"{source.root}: the corpus root is empty; nothing to ingest for {corpus}")
    result = PARSERS[corpus](listing, source)
    for refused in listing.refused:
        result.quarantine_file(refused.path, refused.reason_code, refused.reason)
    return result


__all__ = ["PARSERS", "Candidate", "ParseResult", "QuarantineRow", "parse_corpus"]
