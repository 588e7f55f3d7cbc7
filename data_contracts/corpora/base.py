"""What every corpus parser returns, and the small pieces they share.

A parser turns a source listing into candidate manifest rows (every manifest column except the
decoded audio facts), quarantine rows for parse-level problems, counts of files that are out of
the protocol's scope (song and video files, label files, documentation) and counts of utterances
the protocol excludes by label (IEMOCAP frustration, MSP-IMPROV "other", ...). Every file under
the root lands in exactly one of those.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

AUDIO_SUFFIXES = (".wav", ".flac")
_OS_METADATA = (".DS_Store", "Thumbs.db", "desktop.ini")


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
        self, path: str, utt_id: str, label_map: dict[str, str], known_codes: frozenset[str], result: ParseResult
    ) -> tuple[str, str] | None:
        """(label, label_raw) of audio file `path` (utterance `utt_id`), or None after a quarantine
        row (labelled twice differently, no label line, a code outside `known_codes`) or after
        counting it in `result.excluded` (a known code the protocol leaves out of `label_map`)."""
        if utt_id in self.conflicts:
            result.quarantine_file(path, "label_conflict", self.conflicts[utt_id], utt_id)
            return None
        if utt_id not in self.labels:
            result.quarantine_file(path, "no_label", f"{path}: no label line for {utt_id} in {self.name}", utt_id)
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
