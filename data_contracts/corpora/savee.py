"""SAVEE (Haq & Jackson 2009, University of Surrey; free for research).

Two layouts are accepted, alone or together:

    AudioData/{DC,JE,JK,KL}/{a,d,f,h,n,sa,su}NN.wav      as distributed (44.1 kHz mono)
    ALL/{DC,JE,JK,KL}_{a,d,f,h,n,sa,su}NN.wav            the flattened copy found in the wild

Four male speakers, seven emotions, 480 utterances (neutral 30 per speaker, the others 15).
Label map: a -> angry (SAVEE: anger), d -> disgust, f -> fearful (fear), h -> happy
(happiness), n -> neutral, sa -> sad (sadness), su -> surprised (surprise): SAVEE's own words
are renamed to the adjectives the other corpora use, so that the same emotion has the same name
everywhere. Class order: angry, disgust, fearful, happy, neutral, sad, surprised.

utt_id is ``<speaker>_<code>NN`` in both layouts (``DC_a01``), so a file present in both
layouts is one utterance: the second copy is quarantined as a duplicate at ingest.
Speaker and session are the speaker code; gender is M for all four.

Fold protocol (paper): leave-one-speaker-out, 4 folds; validation speaker of fold k: the next
speaker, (k + 1) mod 4 (`FoldProtocol` in `data_contracts.corpora.base`).

Audio: mono at 16 or 44.1 kHz.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from data_contracts.corpora.base import (
    AudioChecks,
    Candidate,
    CorpusSpec,
    FoldProtocol,
    ParseResult,
    audio_paths,
    no_audio_found,
    stem,
)

if TYPE_CHECKING:
    from data_contracts.source import CorpusSource, Listing

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


def parse(listing: Listing, source: CorpusSource) -> ParseResult:
    """Candidate rows and parse-level quarantine rows of a SAVEE root (labels are in the names)."""
    result = ParseResult(CORPUS)
    in_layout = 0
    for path in audio_paths(listing, result):
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
            result.quarantine_file(
                path, "unknown_speaker", f"{path}: speaker {speaker!r}, expected one of {SPEAKERS}", utt_id
            )
        elif code not in LABEL_MAP:
            result.quarantine_file(
                path,
                "unknown_label",
                f"{path}: emotion code {code!r}, expected one of {sorted(LABEL_MAP)}",
                utt_id,
            )
        else:
            result.candidates.append(
                Candidate(utt_id, CORPUS, path, speaker, speaker, "M", LABEL_MAP[code], code)
            )
    if in_layout == 0:
        raise no_audio_found(source, listing, "SAVEE", LAYOUT)
    return result


SPEC = CorpusSpec(
    name=CORPUS,
    labels=("angry", "disgust", "fearful", "happy", "neutral", "sad", "surprised"),
    folds=FoldProtocol(grouping="speaker", validation="next_group", min_groups=3),
    audio_checks=AudioChecks(sample_rates=frozenset({16000, 44100})),
    parse=parse,
    doc=__doc__,
    licence="free for research (University of Surrey): research use only",
)
