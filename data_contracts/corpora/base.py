"""What every corpus module declares and every corpus parser returns, and the pieces they share.

A corpus module exports one `CorpusSpec`: its name, its classes, its fold protocol (a
`FoldProtocol`, data that `data_contracts.folds` interprets), its audio thresholds (an
`AudioChecks`, applied by `data_contracts.audio`) and its parse function. This module imports
neither pandas nor numpy nor soundfile, so the registry of specs loads fast (`ser --help` lists
the corpora from it).

A parser turns a source listing into candidate manifest rows (every manifest column except the
decoded audio facts), quarantine rows for parse-level problems, counts of files that are out of
the protocol's scope (song and video files, label files, documentation) and counts of utterances
the protocol excludes by label (IEMOCAP frustration, MSP-IMPROV "other", ...). Every file under
the root lands in exactly one of those. `audio_paths` opens every parser's loop: it yields the
audio files of a listing and counts the other files as out of scope.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from data_contracts.errors import CorpusLayoutError

if TYPE_CHECKING:
    from data_contracts.source import CorpusSource, Listing

AUDIO_SUFFIXES = (".wav", ".flac")
_OS_METADATA = (".DS_Store", "Thumbs.db", "desktop.ini")

GROUPINGS = ("session", "speaker", "speaker_blocks", "label_stratified")
"""How a fold protocol groups speakers into test groups (see `FoldProtocol`)."""
VALIDATIONS = {"next_group": 3, "gender_balanced": 2}
"""Validation rule of a fold protocol -> the fewest speaker groups it can work with: `next_group`
needs a test, a validation and a training group; `gender_balanced` draws validation speakers from
the training groups, so a test and a training group suffice."""


@dataclass(frozen=True)
class AudioChecks:
    """Thresholds of the audio checks (see `data_contracts.audio` for what each one rejects)."""

    sample_rates: frozenset[int] = field(default_factory=lambda: frozenset({16000}))
    max_channels: int = 1
    min_duration_s: float = 0.25
    max_duration_s: float = 120.0
    silence_peak: float = 1e-4
    clip_level: float = 0.999
    max_clipped_fraction: float = 0.01

    def __post_init__(self):
        object.__setattr__(self, "sample_rates", frozenset(self.sample_rates))
        if not self.sample_rates or any(not isinstance(r, int) or r <= 0 for r in self.sample_rates):
            raise ValueError(
                f"AudioChecks.sample_rates must be non-empty positive ints, got {sorted(self.sample_rates)}"
            )
        if self.max_channels < 1:
            raise ValueError(f"AudioChecks.max_channels must be >= 1, got {self.max_channels}")
        if not 0 <= self.min_duration_s < self.max_duration_s:
            raise ValueError(
                f"AudioChecks needs 0 <= min_duration_s < max_duration_s, got {self.min_duration_s}, {self.max_duration_s}"
            )
        if not 0 <= self.silence_peak < 1:
            raise ValueError(f"AudioChecks.silence_peak must be in [0, 1), got {self.silence_peak}")
        if not 0 < self.clip_level <= 1:
            raise ValueError(f"AudioChecks.clip_level must be in (0, 1], got {self.clip_level}")
        if not 0 <= self.max_clipped_fraction <= 1:
            raise ValueError(
                f"AudioChecks.max_clipped_fraction must be in [0, 1], got {self.max_clipped_fraction}"
            )


@dataclass(frozen=True)
class FoldProtocol:
    """A speaker-independent fold protocol, as data; `data_contracts.folds.make_folds` builds it.

    grouping: the test groups, one fold each, in natural order of their names (session2 before
    session10): ``session`` (the speakers of one session), ``speaker`` (one speaker) or
    ``speaker_blocks`` (consecutive blocks of `block_size` speakers, the last one possibly
    shorter) or ``label_stratified`` (`fold_count` groups of speakers whose label distributions are
    alike, fewer when there are fewer speakers: the table corpora's k-fold). validation: the validation speakers of fold k, always drawn from the speakers not
    tested in it: ``next_group`` (the group of fold (k + 1) mod n) or ``gender_balanced`` (one
    male and one female training speaker, the (k mod m)-th of each gender's sorted training
    speakers). min_groups: the fewest groups the protocol accepts; fewer is a FoldError, and
    ingest then writes the manifest without folds (a held-out set).
    """

    grouping: str
    validation: str
    min_groups: int
    block_size: int | None = None
    fold_count: int | None = None

    def __post_init__(self):
        if self.grouping not in GROUPINGS:
            raise ValueError(f"FoldProtocol.grouping: got {self.grouping!r}, expected one of {GROUPINGS}")
        if self.validation not in VALIDATIONS:
            raise ValueError(
                f"FoldProtocol.validation: got {self.validation!r}, expected one of {tuple(VALIDATIONS)}"
            )
        least = VALIDATIONS[self.validation]
        if not isinstance(self.min_groups, int) or self.min_groups < least:
            raise ValueError(
                f"FoldProtocol.min_groups: got {self.min_groups!r}, expected an int >= {least} "
                f"(validation {self.validation!r} needs that many speaker groups)"
            )
        if self.grouping == "speaker_blocks":
            if not isinstance(self.block_size, int) or self.block_size < 1:
                raise ValueError(
                    f"FoldProtocol.block_size: got {self.block_size!r}, expected an int >= 1 for speaker_blocks"
                )
        elif self.block_size is not None:
            raise ValueError(
                f"FoldProtocol.block_size: got {self.block_size!r} with grouping {self.grouping!r}; "
                "only speaker_blocks takes a block size"
            )
        if self.grouping == "label_stratified":
            if not isinstance(self.fold_count, int) or self.fold_count < self.min_groups:
                raise ValueError(
                    f"FoldProtocol.fold_count: got {self.fold_count!r}, expected an int >= {self.min_groups} "
                    "for label_stratified"
                )
        elif self.fold_count is not None:
            raise ValueError(
                f"FoldProtocol.fold_count: got {self.fold_count!r} with grouping {self.grouping!r}; "
                "only label_stratified takes a fold count"
            )


@dataclass(frozen=True)
class Candidate:
    """A manifest row before its audio is decoded and checked."""

    utt_id: str
    corpus: str
    path: str
    speaker: str
    session: str
    gender: str
    label: str
    label_raw: str


@dataclass(frozen=True)
class QuarantineRow:
    """A file (or a label-file line) kept out of the manifest, with the reason."""

    corpus: str
    path: str
    utt_id: str | None
    reason_code: str
    reason: str


@dataclass
class ParseResult:
    """Output of a corpus parser. `excluded` counts utterances by raw label that the protocol
    leaves out; `out_of_scope` counts other files under the root by category."""

    corpus: str
    candidates: list[Candidate] = field(default_factory=list)
    quarantine: list[QuarantineRow] = field(default_factory=list)
    out_of_scope: Counter = field(default_factory=Counter)
    excluded: Counter = field(default_factory=Counter)

    def quarantine_file(self, path: str, reason_code: str, reason: str, utt_id: str | None = None) -> None:
        self.quarantine.append(QuarantineRow(self.corpus, path, utt_id, reason_code, reason))


@dataclass
class LabelTable:
    """A label file read line by line.

    labels: utt_id -> (raw label, line number); conflicts: utt_id -> message, for utterances
    labelled differently on two lines; problems: (line number, message) for lines that look like
    label lines but cannot be read.
    """

    name: str
    labels: dict[str, tuple[str, int]] = field(default_factory=dict)
    conflicts: dict[str, str] = field(default_factory=dict)
    problems: list[tuple[int, str]] = field(default_factory=list)

    def add(self, utt_id: str, label_raw: str, line_no: int) -> None:
        if utt_id in self.labels and self.labels[utt_id][0] != label_raw:
            first, first_line = self.labels[utt_id]
            self.conflicts[utt_id] = (
                f"{self.name}: {utt_id} labelled {first!r} on line {first_line} and {label_raw!r} on line {line_no}"
            )
        self.labels.setdefault(utt_id, (label_raw, line_no))

    def label_of(
        self,
        path: str,
        utt_id: str,
        label_map: dict[str, str],
        known_codes: frozenset[str],
        result: ParseResult,
    ) -> tuple[str, str] | None:
        """(label, label_raw) of audio file `path` (utterance `utt_id`), or None after a quarantine
        row (labelled twice differently, no label line, a code outside `known_codes`) or after
        counting it in `result.excluded` (a known code the protocol leaves out of `label_map`)."""
        if utt_id in self.conflicts:
            result.quarantine_file(path, "label_conflict", self.conflicts[utt_id], utt_id)
            return None
        if utt_id not in self.labels:
            result.quarantine_file(
                path, "no_label", f"{path}: no label line for {utt_id} in {self.name}", utt_id
            )
            return None
        label_raw, line_no = self.labels[utt_id]
        if label_raw not in known_codes:
            result.quarantine_file(
                path,
                "unknown_label",
                f"{path}: label {label_raw!r} ({self.name} line {line_no}), expected one of {sorted(known_codes)}",
                utt_id,
            )
            return None
        if label_raw not in label_map:
            result.excluded[label_raw] += 1
            return None
        return label_map[label_raw], label_raw


def decode_label_text(data: bytes) -> str:
    """Label-file bytes as text; bytes that are not UTF-8 become U+FFFD and fail line parsing."""
    return data.decode("utf-8", errors="replace")


def shorten(line: str, limit: int = 80) -> str:
    """`line` cut to `limit` characters for error messages."""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def non_audio_category(path: str) -> str | None:
    """'os_metadata' for Finder/Explorer droppings, 'not_audio' for other non-audio files,
    None for audio files (by suffix)."""
    name = path.rsplit("/", 1)[-1]
    if name.startswith("._") or name in _OS_METADATA:
        return "os_metadata"
    if not name.lower().endswith(AUDIO_SUFFIXES):
        return "not_audio"
    return None


def stem(path: str) -> str:
    """File name without folder and suffix."""
    return path.rsplit("/", 1)[-1].rsplit(".", 1)[0]


def add_label_problems(result: ParseResult, table: LabelTable, path: str) -> None:
    """One quarantine row (reason_code `label_line`) per unreadable line of label file `path`."""
    for line_no, message in table.problems:
        result.quarantine_file(path, "label_line", f"{path} line {line_no}: {message}")


def audio_paths(
    listing: Listing, result: ParseResult, is_label_file: Callable[[str], bool] | None = None
) -> Iterator[str]:
    """The paths of the audio files of `listing`, in listing order (the opening of every
    parser's loop). Every other file is counted in ``result.out_of_scope``: as ``label_file``
    when `is_label_file(path)` says so (even an OS metadata file), else under its
    `non_audio_category`."""
    for entry in listing.files:
        category = non_audio_category(entry.path)
        if category is None:
            yield entry.path
        else:
            result.out_of_scope[
                "label_file" if is_label_file and is_label_file(entry.path) else category
            ] += 1


def no_audio_found(source: CorpusSource, listing: Listing, what: str, layout: str) -> CorpusLayoutError:
    """The error of a root that holds no `what` audio in `layout`: probably another corpus, or
    the wrong folder."""
    return CorpusLayoutError(
        f"{source.root}: no {what} audio found; expected the layout {layout} ({len(listing.files)} files under the root)"
    )


Parser = Callable[["Listing", "CorpusSource"], ParseResult]
"""A corpus parser: `parse(listing, source)` (`source` reads label files and names the root in errors)."""


USER_DATA_LICENCE = "unknown: supplied by the user"
"""The licence a model card states for a dataset the user supplies (no corpus spec records its terms)."""


@dataclass(frozen=True)
class CorpusSpec:
    """Everything the pipeline knows about one corpus; each corpus module exports one as `SPEC`
    and `data_contracts.corpora.SPECS` registers them by name.

    name: the corpus name of the manifest's ``corpus`` column and of the CLI; labels: the class
    names in class-index order (models trained on the corpus use it); folds: its FoldProtocol;
    audio_checks: the thresholds its files must pass; parse: its Parser; doc: its module's
    docstring (layout, label map, fold protocol), for readers and ``help()``; licence: the terms the
    corpus is distributed under (from CORPORA.md), which a model trained on it inherits and its model
    card states (:data:`USER_DATA_LICENCE` for a dataset the user supplies).
    """

    name: str
    labels: tuple[str, ...]
    folds: FoldProtocol
    audio_checks: AudioChecks
    parse: Parser
    doc: str
    licence: str = USER_DATA_LICENCE

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name or self.name != self.name.strip().lower():
            raise ValueError(f"CorpusSpec.name: got {self.name!r}, expected a non-empty lower-case name")
        labels = self.labels
        if not isinstance(labels, tuple) or not labels or not all(isinstance(x, str) and x for x in labels):
            raise ValueError(
                f"CorpusSpec {self.name}: labels must be a non-empty tuple of class names, got {labels!r}"
            )
        if len(set(labels)) != len(labels):
            raise ValueError(f"CorpusSpec {self.name}: labels {labels} name a class twice")
        if not isinstance(self.folds, FoldProtocol):
            raise ValueError(f"CorpusSpec {self.name}: folds must be a FoldProtocol, got {self.folds!r}")
        if not isinstance(self.audio_checks, AudioChecks):
            raise ValueError(
                f"CorpusSpec {self.name}: audio_checks must be AudioChecks, got {self.audio_checks!r}"
            )
        if not callable(self.parse):
            raise ValueError(
                f"CorpusSpec {self.name}: parse must be a function (listing, source) -> ParseResult"
            )
        if not isinstance(self.doc, str) or not self.doc.strip():
            raise ValueError(f"CorpusSpec {self.name}: doc must say the corpus's layout, label map and folds")
