"""Table datasets: your own recordings, listed one per row in a CSV or Parquet table.

Format: a header, then one row per recording. Required columns ``path`` (relative to the table's
folder, absolute, or ``s3://…``; every path must lie inside the table's folder, which is the
dataset's audio root), ``label`` and ``speaker``; optional ``split`` (``train``, ``valid`` or
``test``: a given protocol, used instead of speaker folds; it makes ``speaker`` optional),
``session`` (default: the speaker) and ``gender`` (``F`` or ``M``; anything else is ``U``,
unknown). Any other column is kept, per row, as the manifest's ``metadata`` (a JSON object).

Rows are numbered as a spreadsheet shows them: the header is row 1, the first recording row 2.
A bad row never stops the ingest: it becomes a quarantine row whose reason starts with
``<table> row N:``. Reason codes of the table (the audio checks add theirs,
`data_contracts.audio`, and ingest adds ``duplicate`` for audio identical to an earlier row's):

| reason_code | the row's |
|---|---|
| empty_path | ``path`` is empty |
| path_escape | path leaves the table's folder (``../``, an absolute path or s3:// URL elsewhere) |
| symlink_escape | path is a symlink (or lies under one) that leads out of the table's folder |
| missing_file | file does not exist (or cannot be stat'ed) |
| empty_label | ``label`` is empty |
| unknown_label | label (after ``--label-map``) is not one of ``--labels`` |
| empty_speaker | ``speaker`` is empty and the table has no ``split`` column |
| bad_split | ``split`` is not train, valid or test |

Classes: the labels of the manifest's rows after the label map, sorted; recorded in the report
(``labels``) and the spec `register`-ed under the dataset's name. utt_id is the relative path
without its suffix.

Folds: speaker-independent k-fold stratified by label (`FoldProtocol` grouping
``label_stratified``, `data_contracts.folds.stratified_speaker_groups`), k = ``--folds``
(default 5) or the number of speakers when fewer; fold k's validation speakers are fold k + 1's
test speakers (``next_group``), so at least 3 speakers are needed. With a ``split`` column the
fold table is that split, as fold 0.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from data_contracts.corpora.base import AudioChecks, Candidate, CorpusSpec, FoldProtocol, QuarantineRow
from data_contracts.errors import CorpusLayoutError, IngestError, SourceError
from data_contracts.source import CorpusSource, Listing, SourceFile, check_relative_path, open_source

if TYPE_CHECKING:
    import pandas as pd

REQUIRED_COLUMNS = ("path", "label", "speaker")
OPTIONAL_COLUMNS = ("split", "session", "gender")
SPLITS = ("train", "valid", "test")
TABLE_SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
DATASET_NAME = re.compile(r"[a-z0-9][a-z0-9-]*")
DEFAULT_FOLDS = 5
MIN_SPEAKERS = 3
"""Test, validation and training speakers: the fewest a speaker-independent fold can have."""
TABLE_CHECKS = AudioChecks(
    sample_rates=frozenset({8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000}), max_channels=2
)
"""Audio thresholds of table datasets: the usual recording rates (training resamples), up to two
channels (training down-mixes), the default duration and level bounds."""


def check_dataset_name(name: str) -> str:
    """`name` if it is a slug (``[a-z0-9][a-z0-9-]*``) and not an official corpus's name;
    IngestError saying which rule it breaks otherwise."""
    from data_contracts.corpora import OFFICIAL_CORPORA

    if not isinstance(name, str) or not DATASET_NAME.fullmatch(name):
        raise IngestError(
            f"dataset name {name!r}: expected a slug of lower-case letters, digits and '-' "
            "that starts with a letter or digit (e.g. calls, clinic-2024)"
        )
    if name in OFFICIAL_CORPORA:
        raise IngestError(
            f"dataset name {name!r} is reserved for the official corpus; pick another "
            f"(reserved: {', '.join(OFFICIAL_CORPORA)})"
        )
    return name


def _not_a_layout(listing: Listing, source: CorpusSource):
    raise CorpusLayoutError(
        f"{source.root}: a table dataset has no folder layout; ingest it from its table "
        "(`ser ingest table LABELS.csv --name NAME`)"
    )


def table_spec(name: str, labels: Sequence[str], fold_count: int = DEFAULT_FOLDS) -> CorpusSpec:
    """The CorpusSpec of table dataset `name` with classes `labels` (sorted) and k = `fold_count`."""
    return CorpusSpec(
        name=check_dataset_name(name),
        labels=tuple(sorted(labels)),
        folds=FoldProtocol(
            grouping="label_stratified",
            validation="next_group",
            min_groups=MIN_SPEAKERS,
            fold_count=fold_count,
        ),
        audio_checks=TABLE_CHECKS,
        parse=_not_a_layout,
        doc=__doc__,
    )


@dataclass(frozen=True)
class Table:
    """A table read whole: its rows as strings (missing cells are ``""``), the name it goes by in
    messages, the source of its folder (the audio root) and its own file's stat (None for a table
    built from a folder layout, `data_contracts.corpora.folders`)."""

    frame: pd.DataFrame
    name: str
    source: CorpusSource
    file: SourceFile | None

    @property
    def has_split(self) -> bool:
        return "split" in self.frame.columns


def _split_location(location: str) -> tuple[str, str]:
    """(the table's folder, its file name) of a local path or s3:// URL."""
    if location.startswith("s3://"):
        folder, _, name = location.rpartition("/")
        return folder, name
    path = os.path.abspath(os.path.expanduser(location))
    return os.path.dirname(path), os.path.basename(path)


def _check_header(columns: list, name: str) -> list[str]:
    """The stripped column names; IngestError naming an empty or repeated one, or a missing
    required column."""
    names = [str(c).strip() for c in columns]
    for index, column in enumerate(names, start=1):
        if not column:
            raise IngestError(f"{name}: column {index} of the header has no name; every column needs one")
        if names.count(column) > 1:
            raise IngestError(f"{name}: the header names column {column!r} twice")
    required = [c for c in REQUIRED_COLUMNS if not (c == "speaker" and "split" in names)]
    for column in required:
        if column not in names:
            raise IngestError(
                f"{name}: no column {column!r} in the header {names}; expected the columns "
                f"{', '.join(REQUIRED_COLUMNS)} (optional {', '.join(OPTIONAL_COLUMNS)})"
            )
    return names


def _read_frame(data: bytes, name: str) -> pd.DataFrame:
    import csv

    import pandas as pd

    kind = TABLE_SUFFIXES.get(posixpath.splitext(name.lower())[1])
    if kind is None:
        raise IngestError(f"{name}: expected a .csv or .parquet table")
    try:
        if kind == "csv":
            text = data.decode("utf-8-sig")
            header = next(csv.reader(io.StringIO(text)), None)
            if not header:
                raise IngestError(
                    f"{name}: empty table; expected a header with {', '.join(REQUIRED_COLUMNS)}"
                )
            _check_header(header, name)
            frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, skipinitialspace=True)
        else:
            frame = pd.read_parquet(io.BytesIO(data))
            _check_header(list(frame.columns), name)
            frame = frame.astype(object).where(frame.notna(), "").astype(str)
    except (UnicodeDecodeError, ValueError, OSError, csv.Error) as err:
        raise IngestError(f"{name}: cannot read the table: {err}") from err
    frame.columns = _check_header(list(frame.columns), name)
    return frame


def read_table(location: str) -> Table:
    """The table at `location` (a local path or ``s3://bucket/…/labels.csv``). IngestError for an
    unreadable table, a bad header or a missing column (named); SourceError for a missing file."""
    folder, file_name = _split_location(location)
    source = open_source(folder)
    data = source.read_bytes(file_name)
    return Table(_read_frame(data, location), location, source, source.stat(file_name))


def read_label_map(location: str) -> dict[str, str]:
    """The label map of a JSON file: an object of label -> merged label (``{"calm": "neutral"}``);
    IngestError naming the file and what is wrong otherwise."""
    try:
        with open(location, encoding="utf-8") as handle:
            mapping = json.load(handle)
    except (OSError, ValueError) as err:
        raise IngestError(f"--label-map {location}: cannot read a JSON object: {err}") from err
    if not isinstance(mapping, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and v.strip() for k, v in mapping.items()
    ):
        raise IngestError(
            f"--label-map {location}: expected a JSON object of label -> non-empty label, "
            'e.g. {"calm": "neutral", "exc": "hap"}'
        )
    return {k.strip(): v.strip() for k, v in mapping.items()}


def relative_audio_path(value: str, source: CorpusSource) -> str:
    """The path of a table cell relative to the table's folder `source.root`: SourceError
    (``empty_path``, ``path_escape``) when it is empty or names its way out of the folder.
    Symlinks leading out are refused when the file is stat'ed (``symlink_escape``)."""
    from data_contracts.source import LocalSource

    if not value:
        raise SourceError("empty_path", "path is empty")
    root, local = source.root.rstrip("/"), isinstance(source, LocalSource)
    if "://" in value:
        if local or not value.startswith(f"{root}/"):
            raise SourceError("path_escape", f"{value}: outside the table's folder {root}")
        value = value[len(root) + 1 :]
    elif os.path.isabs(value):
        absolute, base = os.path.abspath(value), os.path.abspath(root) + os.sep
        if not local or not absolute.startswith(base):
            raise SourceError("path_escape", f"{value}: outside the table's folder {root}")
        value = absolute[len(base) :].replace(os.sep, "/")
    normal = posixpath.normpath(value)
    if normal == ".." or normal.startswith("../") or "\\" in value:
        raise SourceError("path_escape", f"{value}: leaves the table's folder {root}")
    return check_relative_path(normal)


@dataclass
class TableRows:
    """A table's rows read as manifest candidates: `candidates[i]` came from table row
    `rows[i]`, with `metadata[i]` (JSON) and `splits[i]` ("" without a split column); rows that
    cannot be candidates are in `quarantine`; `listing` holds the table's file and each listed
    audio file's stat (what the source fingerprint hashes)."""

    candidates: list[Candidate] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)
    metadata: list[str] = field(default_factory=list)
    splits: list[str] = field(default_factory=list)
    quarantine: list[QuarantineRow] = field(default_factory=list)
    listing: Listing | None = None


def _gender(value: str) -> str:
    return value.strip().upper() if value.strip().upper() in ("F", "M") else "U"


def _row_candidate(
    table: Table, name: str, number: int, cell: dict[str, str], allowed, label_map
) -> tuple[Candidate, SourceFile, str] | QuarantineRow:
    """Table row `number` (spreadsheet numbering) as (candidate, its file's stat, its split), or
    the quarantine row saying why it cannot be one."""
    path = cell["path"] or f"(row {number})"

    def reject(code: str, why: str) -> QuarantineRow:
        return QuarantineRow(name, path, None, code, f"{table.name} row {number}: {why}")

    try:
        path = relative_audio_path(cell["path"], table.source)
        stat = table.source.stat(path)
    except SourceError as err:
        return reject("missing_file" if err.reason_code == "read_error" else err.reason_code, str(err))
    split = cell.get("split", "").lower()
    if table.has_split and split not in SPLITS:
        return reject("bad_split", f"split {cell['split']!r}, expected one of {', '.join(SPLITS)}")
    label_raw = cell["label"]
    label = label_map.get(label_raw, label_raw)
    if not label_raw:
        return reject("empty_label", "label is empty")
    if allowed is not None and label not in allowed:
        merged = f" (merged from {label_raw!r})" if label != label_raw else ""
        return reject("unknown_label", f"label {label!r}{merged} is not one of --labels {sorted(allowed)}")
    speaker = cell.get("speaker", "")
    if not speaker and not table.has_split:
        return reject("empty_speaker", "speaker is empty; speaker-independent folds need every row's speaker")
    speaker = speaker or f"unknown-{split}"
    candidate = Candidate(
        utt_id=posixpath.splitext(path)[0],
        corpus=name,
        path=path,
        speaker=speaker,
        session=cell.get("session") or speaker,
        gender=_gender(cell.get("gender", "")),
        label=label,
        label_raw=label_raw,
    )
    return candidate, stat, split


def table_rows(
    table: Table,
    name: str,
    labels: Sequence[str] | None = None,
    label_map: Mapping[str, str] | None = None,
) -> TableRows:
    """Every row of `table` as a candidate of dataset `name` or a quarantine row (module doc's
    reasons). `labels` restricts the classes, `label_map` merges labels before that."""
    allowed = set(labels) if labels else None
    extra = [c for c in table.frame.columns if c not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
    out, files = TableRows(), {table.file.path: table.file} if table.file else {}
    for index, row in enumerate(table.frame.to_dict("records")):
        cell = {k: str(v).strip() for k, v in row.items()}
        outcome = _row_candidate(table, name, index + 2, cell, allowed, label_map or {})
        if isinstance(outcome, QuarantineRow):
            out.quarantine.append(outcome)
            continue
        candidate, files[candidate.path], split = outcome
        out.candidates.append(candidate)
        out.rows.append(index + 2)
        out.metadata.append(json.dumps({c: cell[c] for c in extra}, ensure_ascii=False, sort_keys=True))
        out.splits.append(split)
    out.listing = Listing(tuple(sorted(files.values(), key=lambda f: f.path)), ())
    return out


def table_source_fingerprint(location: str, name: str) -> str:
    """The cheap fingerprint of a table dataset's source: the table file's and every listed audio
    file's (path, size, version), as `data_contracts.fingerprint.listing_fingerprint` hashes a
    corpus root's listing; no audio is decoded."""
    from data_contracts.fingerprint import listing_fingerprint

    return listing_fingerprint(table_rows(read_table(location), name).listing)
