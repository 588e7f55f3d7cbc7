"""IEMOCAP (Busso et al. 2008, USC SAIL; licence by request).

Layout (the root is ``IEMOCAP_full_release`` or the folder that holds it):

    Session{1..5}/sentences/wav/<dialog>/<utt_id>.wav        16 kHz mono utterances
    Session{1..5}/dialog/EmoEvaluation/<dialog>.txt          labels, one file per dialog
    Session{1..5}/dialog/wav/<dialog>.wav                    whole dialogs (out of scope)

A label line reads ``[START - END]<TAB><utt_id><TAB><label><TAB>[V, A, D]``, e.g.
``[6.2901 - 8.2357]	Ses01F_impro01_F000	neu	[2.5000, 2.5000, 2.5000]``; the other lines of
the file (annotator lines ``C-E1:``/``A-E1:``, the ``%`` header, blanks) are ignored. Label
codes: neu, hap, exc, ang, sad, fru, sur, fea, dis, oth, xxx.

Label map (paper's four-class protocol, 5531 utterances): neu -> neutral, hap and exc -> happy
(merged), ang -> angry, sad -> sad. The other known codes are excluded by protocol (counted per
code in the report, not quarantined); an unknown code is quarantined.

Speaker: the session plus the gender letter opening the last part of the utt_id
(``Ses01F_impro01_M012`` -> speaker ``Ses01M``, session ``Ses01``, gender ``M``). Each session
holds one female and one male speaker.

Fold protocol (paper): leave-one-session-out, 5 folds; validation speakers of fold k: both
speakers of the next session, (k + 1) mod 5 (`FoldProtocol` in `data_contracts.corpora.base`).

Audio: 16 kHz mono.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from data_contracts.corpora.base import (
    AudioChecks,
    Candidate,
    CorpusSpec,
    FoldProtocol,
    LabelTable,
    ParseResult,
    add_label_problems,
    audio_paths,
    decode_label_text,
    no_audio_found,
    shorten,
    stem,
)
from data_contracts.errors import SourceError

if TYPE_CHECKING:
    from data_contracts.source import CorpusSource, Listing

CORPUS = "iemocap"
LAYOUT = (
    "IEMOCAP_full_release/Session{1..5}/sentences/wav/<dialog>/<utt_id>.wav with labels in "
    "Session{1..5}/dialog/EmoEvaluation/<dialog>.txt"
)
LABEL_MAP = {"neu": "neutral", "hap": "happy", "exc": "happy", "ang": "angry", "sad": "sad"}
KNOWN_CODES = frozenset(LABEL_MAP) | {"fru", "sur", "fea", "dis", "oth", "xxx"}
_UTT_ID = re.compile(r"^Ses(\d\d)[FM]_\w+_([FM])\d{3}$")
_LABEL_LINE = re.compile(
    r"^\[\s*(\d+(?:\.\d+)?)\s*-\s*(\d+(?:\.\d+)?)\s*\]\s+(\S+)\s+(\S+)\s+"
    r"\[\s*-?\d+(?:\.\d+)?\s*,\s*-?\d+(?:\.\d+)?\s*,\s*-?\d+(?:\.\d+)?\s*\]$"
)
_PREFIX = re.compile(r"^((?:IEMOCAP_full_release/)?)Session(\d+)/(.*)$")


def read_emo_evaluation(text: str, name: str) -> LabelTable:
    """Utterance labels of one EmoEvaluation file; never raises.

    Lines opening with ``[`` must be full label lines; those that are not, or whose utt_id is not
    an IEMOCAP id, go to `problems` with their line number. Other lines are ignored.
    """
    table = LabelTable(name)
    for line_no, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line.startswith("["):
            continue
        match = _LABEL_LINE.match(line)
        if match is None:
            table.problems.append(
                (line_no, f"expected '[START - END]\\tUTT_ID\\tLABEL\\t[V, A, D]', got {shorten(line)!r}")
            )
            continue
        start, end, utt_id, label_raw = match.groups()
        if _UTT_ID.match(utt_id) is None:
            table.problems.append(
                (line_no, f"{shorten(utt_id)!r} is not an IEMOCAP utterance id (Ses01F_impro01_F000)")
            )
        elif float(end) < float(start):
            table.problems.append((line_no, f"{utt_id}: end time {end} before start time {start}"))
        else:
            table.add(utt_id, label_raw, line_no)
    return table


def _read_label_files(listing: Listing, source: CorpusSource, result: ParseResult) -> dict[str, LabelTable]:
    """label file path -> its LabelTable, for every ``Session<n>/dialog/EmoEvaluation/<dialog>.txt``."""
    tables = {}
    for entry in listing.files:
        match = _PREFIX.match(entry.path)
        if match is None:
            continue
        parts = match.group(3).split("/")
        if len(parts) == 3 and parts[:2] == ["dialog", "EmoEvaluation"] and parts[2].endswith(".txt"):
            try:
                text = decode_label_text(source.read_bytes(entry.path))
            except SourceError as err:
                result.quarantine_file(entry.path, err.reason_code, str(err))
                continue
            table = read_emo_evaluation(text, entry.path)
            add_label_problems(result, table, entry.path)
            tables[entry.path] = table
    return tables


def _label_of(path, utt_id, label_path, tables, result) -> tuple[str, str] | None:
    """(label, label_raw) of utterance `utt_id`, or None after quarantining or excluding it."""
    if label_path not in tables:
        result.quarantine_file(path, "no_label", f"{path}: label file {label_path} is missing", utt_id)
        return None
    return tables[label_path].label_of(path, utt_id, LABEL_MAP, KNOWN_CODES, result)


def _parse_utterance(path, base, session, parts, tables, result) -> Candidate | None:
    dialog, utt_id = parts[2], stem(path)
    match = _UTT_ID.match(utt_id)
    if match is None:
        result.quarantine_file(path, "bad_name", f"{path}: {utt_id!r} is not an IEMOCAP utterance id", utt_id)
        return None
    utt_session, gender = match.groups()
    if int(utt_session) != int(session):
        result.quarantine_file(
            path,
            "session_mismatch",
            f"{path}: utterance session Ses{utt_session} disagrees with folder Session{session}",
            utt_id,
        )
        return None
    if not utt_id.startswith(f"{dialog}_"):
        result.quarantine_file(
            path,
            "dialog_mismatch",
            f"{path}: utterance {utt_id} is not part of dialog folder {dialog}",
            utt_id,
        )
        return None
    label_path = f"{base}Session{session}/dialog/EmoEvaluation/{dialog}.txt"
    labelled = _label_of(path, utt_id, label_path, tables, result)
    if labelled is None:
        return None
    return Candidate(
        utt_id=utt_id,
        corpus=CORPUS,
        path=path,
        speaker=f"Ses{utt_session}{gender}",
        session=f"Ses{utt_session}",
        gender=gender,
        label=labelled[0],
        label_raw=labelled[1],
    )


def _is_label_file(path: str) -> bool:
    return path.endswith(".txt") and "/EmoEvaluation/" in path


def parse(listing: Listing, source: CorpusSource) -> ParseResult:
    """Candidate rows, quarantine rows, exclusions and out-of-scope counts of an IEMOCAP root."""
    result = ParseResult(CORPUS)
    tables = _read_label_files(listing, source, result)
    in_layout = 0
    for path in audio_paths(listing, result, _is_label_file):
        match = _PREFIX.match(path)
        parts = match.group(3).split("/") if match else []
        if len(parts) == 4 and parts[:2] == ["sentences", "wav"]:
            in_layout += 1
            candidate = _parse_utterance(path, match.group(1), match.group(2), parts, tables, result)
            if candidate is not None:
                result.candidates.append(candidate)
        elif len(parts) == 3 and parts[:2] == ["dialog", "wav"]:
            result.out_of_scope["dialog_audio"] += 1
        else:
            result.quarantine_file(path, "bad_name", f"{path}: audio file outside the layout {LAYOUT}")
    if in_layout == 0:
        raise no_audio_found(source, listing, "IEMOCAP utterance", LAYOUT)
    return result


SPEC = CorpusSpec(
    name=CORPUS,
    labels=("neutral", "happy", "angry", "sad"),
    folds=FoldProtocol(grouping="session", validation="next_group", min_groups=3),
    audio_checks=AudioChecks(sample_rates=frozenset({16000})),
    parse=parse,
    doc=__doc__,
    licence="licence by request (USC SAIL): use under the licence agreement each user signs",
)
