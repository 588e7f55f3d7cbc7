"""SAVEE (Haq & Jackson 2009, University of Surrey; free for research).

Two layouts are accepted, alone or together:

    AudioData/{DC,JE,JK,KL}/{a,d,f,h,n,sa,su}NN.wav      as distributed (44.1 kHz mono)
    ALL/{DC,JE,JK,KL}_{a,d,f,h,n,sa,su}NN.wav            the flattened copy found in the wild

Four male speakers, seven emotions, 480 utterances (neutral 30 per speaker, the others 15).
Label map: a -> angry (SAVEE: anger), d -> disgust, f -> fearful (fear), h -> happy
(happiness), n -> neutral, sa -> sad (sadness), su -> surprised (surprise).

utt_id is ``<speaker>_<code>NN`` in both layouts (``DC_a01``), so a file present in both
layouts is one utterance: the second copy is quarantined as a duplicate at ingest.
Speaker and session are the speaker code; gender is M for all four.

Fold protocol (paper): leave-one-speaker-out, 4 folds; see `data_contracts.folds`.
"""

from __future__ import annotations

import re

from data_contracts.corpora.base import Candidate, ParseResult, non_audio_category, stem
from data_contracts.errors import CorpusLayoutError
from data_contracts.source import Listing

CORPUS = "savee"
LAYOUT = "AudioData/{DC,JE,JK,KL}/{a,d,f,h,n,sa,su}NN.wav or ALL/{DC,JE,JK,KL}_{a,...,su}NN.wav"
SPEAKERS = ("DC", "JE", "JK", "KL")
LABEL_MAP = {
    "a": "angry",
    "d": "disgust",
    "f": "fearful",
    "h": "happy",
    "n": "neutral",
    "sa": "sad",
    "su": "surprised",
}
_AUDIODATA_NAME = re.compile(r"^([a-z]+)(\d\d)$")
_ALL_NAME = re.compile(r"^([A-Za-z]+)_([a-z]+)(\d\d)$")


def _fields(path: str, parts: list[str]) -> tuple[str, str, str] | None:
    """(speaker, code, number) from either layout, or None when the path is in neither."""
    if len(parts) == 3 and parts[0] == "AudioData":
        match = _AUDIODATA_NAME.match(stem(path))
        return (parts[1], *match.groups()) if match else None
    if len(parts) == 2 and parts[0] == "ALL":
        match = _ALL_NAME.match(stem(path))
        return match.groups() if match else None
    return None


def parse(listing: Listing, source) -> ParseResult:
    """Candidate rows and parse-level quarantine rows of a SAVEE root (labels are in the names)."""
    result = ParseResult(CORPUS)
    in_layout = 0
    for entry in listing.files:
        path = entry.path
        category = non_audio_category(path)
        if category is not None:
            result.out_of_scope[category] += 1
            continue
        parts = path.split("/")
        if parts[0] not in ("AudioData", "ALL"):
            result.quarantine_file(path, "bad_name", f"{path}: audio file outside the layout {LAYOUT}")
            continue
        in_layout += 1
        fields = _fields(path, parts)
        if fields is None:
            result.quarantine_file(path, "bad_name", f"{path}: name does not match {LAYOUT}")
            continue
        speaker, code, number = fields
        utt_id = f"{speaker}_{code}{number}"
        if speaker not in SPEAKERS:
            result.quarantine_file(path, "unknown_speaker", f"{path}: speaker {speaker!r}, expected one of {SPEAKERS}", utt_id)
        elif code not in LABEL_MAP:
            result.quarantine_file(
                path, "unknown_label", f"{path}: emotion code {code!r}, expected one of {sorted(LABEL_MAP)}", utt_id
            )
        else:
            result.candidates.append(
                Candidate(utt_id, CORPUS, path, speaker, speaker, "M", LABEL_MAP[code], code)
            )
    if in_layout == 0:
        raise CorpusLayoutError(
            f"{source.root}: no SAVEE audio found; expected the layout {LAYOUT} ({len(listing.files)} files under the root)"
        )
    return result
