"""MSP-IMPROV (Busso et al. 2017, UT Dallas; licence by request).

Layout:

    Audio/session{1..6}/<scenario>/<type>/MSP-IMPROV-S01A-F01-P-FM01.wav
    Evalution.txt                      consensus labels (the distributor's spelling;
                                       ``Evaluation.txt`` is accepted too)

File name fields: ``S01A`` scenario 01 with target emotion letter A; ``F01`` the speaker (gender
F/M and session number 01..06); ``P`` the recording type (R read, S improvised, P target,
T natural interaction); ``FM01`` the dialog pair and index. The ``<scenario>`` and ``<type>``
folders must repeat the name's fields and the ``session{n}`` folder the speaker's session.

Label lines open an utterance's block: ``UTD-IMPROV-S01A-F01-P-FM01.avi; A; A:2.6; V:3.0; ...``
(fields separated by ``;``, spacing tolerated); the block's other lines (per-rater lines,
blanks) are ignored. The first field names the utterance (``UTD-`` stands for the ``MSP-`` of
the audio name), the second is the consensus label.

Label map (paper's four-class protocol): N -> neutral, H -> happy, A -> angry, S -> sad; O and X
(other, no agreement) are excluded by protocol and counted; any other code is quarantined.

Speaker: the name's speaker field (``F01``); session ``session<n>``; gender its first letter.
Fold protocol (paper): leave-one-session-out, 6 folds; validation speakers of fold k: both
speakers of the next session, (k + 1) mod 6 (`FoldProtocol` in `data_contracts.corpora.base`).

Audio: mono at 16, 44.1 or 48 kHz.
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
    non_audio_category,
    shorten,
    stem,
)
from data_contracts.errors import CorpusLayoutError, SourceError

if TYPE_CHECKING:
    from data_contracts.source import CorpusSource, Listing

CORPUS = "msp-improv"
LABEL_FILES = ("Evalution.txt", "Evaluation.txt")
LAYOUT = "Audio/session{1..6}/<scenario>/<type>/MSP-IMPROV-S01A-F01-P-FM01.wav with labels in Evalution.txt"
LABEL_MAP = {"N": "neutral", "H": "happy", "A": "angry", "S": "sad"}
KNOWN_CODES = frozenset(LABEL_MAP) | {"O", "X"}
_NAME = re.compile(r"^MSP-IMPROV-(S\d\d[A-Z])-([FM])(\d\d)-([RSPT])-([A-Z]+\d+)$")
_LABEL_ID = re.compile(r"^UTD-IMPROV-(S\d\d[A-Z]-[FM]\d\d-[RSPT]-[A-Z]+\d+)\.avi$")
_SESSION = re.compile(r"^session(\d+)$")


def read_evaluation(text: str, name: str) -> LabelTable:
    """Consensus labels of an Evalution.txt, keyed by the audio stem ``MSP-IMPROV-...``; never raises.

    Lines opening with ``UTD-IMPROV-`` must read ``UTD-IMPROV-<id>.avi; <code>; ...`` with a
    one-letter code; those that do not go to `problems` with their line number.
    """
    table = LabelTable(name)
    for line_no, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line.startswith("UTD-IMPROV-"):
            continue
        fields = [f.strip() for f in line.split(";")]
        match = _LABEL_ID.match(fields[0])
        if match is None or len(fields) < 2 or re.fullmatch(r"[A-Z]", fields[1]) is None:
            table.problems.append(
                (
                    line_no,
                    f"expected 'UTD-IMPROV-S01A-F01-P-FM01.avi; <A|H|S|N|O|X>; ...', got {shorten(line)!r}",
                )
            )
            continue
        table.add(f"MSP-IMPROV-{match.group(1)}", fields[1], line_no)
    return table


def _read_labels(listing: Listing, source: CorpusSource, result: ParseResult) -> tuple[str, LabelTable]:
    paths = {entry.path for entry in listing.files}
    for label_path in LABEL_FILES:
        if label_path in paths:
            try:
                text = decode_label_text(source.read_bytes(label_path))
            except SourceError as err:
                raise CorpusLayoutError(
                    f"{source.root}: cannot read the label file {label_path}: {err}"
                ) from err
            table = read_evaluation(text, label_path)
            add_label_problems(result, table, label_path)
            return label_path, table
    raise CorpusLayoutError(
        f"{source.root}: label file Evalution.txt not found at the corpus root; expected the layout {LAYOUT}"
    )


def _parse_utterance(path: str, parts: list[str], table: LabelTable, result: ParseResult):
    utt_id = stem(path)
    match = _NAME.match(utt_id)
    if match is None:
        result.quarantine_file(
            path, "bad_name", f"{path}: {utt_id!r} does not match MSP-IMPROV-S01A-F01-P-FM01", utt_id
        )
        return None
    scenario, gender, number, rec_type, _ = match.groups()
    folder_session = _SESSION.match(parts[1])
    if folder_session is None or int(folder_session.group(1)) != int(number):
        result.quarantine_file(
            path,
            "session_mismatch",
            f"{path}: speaker {gender}{number} disagrees with folder {parts[1]}",
            utt_id,
        )
        return None
    if (parts[2], parts[3]) != (scenario, rec_type):
        result.quarantine_file(
            path,
            "folder_mismatch",
            f"{path}: scenario/type folders {parts[2]}/{parts[3]} disagree with the name's {scenario}/{rec_type}",
            utt_id,
        )
        return None
    labelled = table.label_of(path, utt_id, LABEL_MAP, KNOWN_CODES, result)
    if labelled is None:
        return None
    label, label_raw = labelled
    return Candidate(
        utt_id=utt_id,
        corpus=CORPUS,
        path=path,
        speaker=f"{gender}{number}",
        session=f"session{int(number)}",
        gender=gender,
        label=label,
        label_raw=label_raw,
    )


def parse(listing: Listing, source: CorpusSource) -> ParseResult:
    """Candidate rows, quarantine rows, exclusions and out-of-scope counts of an MSP-IMPROV root."""
    result = ParseResult(CORPUS)
    if not any(e.path.startswith("Audio/") and non_audio_category(e.path) is None for e in listing.files):
        raise no_audio_found(source, listing, "MSP-IMPROV", LAYOUT)
    label_path, table = _read_labels(listing, source, result)
    for path in audio_paths(listing, result, lambda path: path == label_path):
        parts = path.split("/")
        if len(parts) != 5 or parts[0] != "Audio":
            result.quarantine_file(path, "bad_name", f"{path}: audio file outside the layout {LAYOUT}")
            continue
        candidate = _parse_utterance(path, parts, table, result)
        if candidate is not None:
            result.candidates.append(candidate)
    return result


SPEC = CorpusSpec(
    name=CORPUS,
    labels=("neutral", "happy", "angry", "sad"),
    folds=FoldProtocol(grouping="session", validation="next_group", min_groups=3),
    audio_checks=AudioChecks(sample_rates=frozenset({16000, 44100, 48000})),
    parse=parse,
    doc=__doc__,
    licence="licence by request (UT Dallas): use under the licence agreement each user signs",
)
