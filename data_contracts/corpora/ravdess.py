"""RAVDESS (Livingstone & Russo 2018, Zenodo 1188976, CC BY-NC-SA 4.0).

Layout: ``Actor_{01..24}/MM-VV-EE-II-SS-RR-AA.wav`` (48 kHz, 16-bit; a few stereo files). The
shared development copy holds actors 01-20 as 16 kHz mono ``.flac`` with the same names; both
suffixes are accepted. Fields of the name:

| field | values |
|---|---|
| MM modality | 01 audio-video, 02 video only, 03 audio only (only 03 is in scope) |
| VV vocal channel | 01 speech, 02 song (only speech is in scope) |
| EE emotion | 01 neutral, 02 calm, 03 happy, 04 sad, 05 angry, 06 fearful, 07 disgust, 08 surprised |
| II intensity | 01 normal, 02 strong (neutral has no strong) |
| SS statement, RR repetition | 01 or 02 |
| AA actor | 01..24; odd = male, even = female; must match the ``Actor_AA`` folder |

Label map: the emotion field, in the order above (the class order of `LABELS`). utt_id is the
file stem, speaker and session are the folder name ``Actor_AA``, label_raw is the emotion field
``EE``.
Song and video files are counted as out of scope (``song``, ``video``), never mixed in.

Fold protocol (paper): actors sorted by number, consecutive groups of 4 actors form the test
folds (6 folds with 24 actors, 5 with the 20 shared here). Validation speakers of fold k (ours):
one male and one female training actor, the (k mod m)-th of each gender's sorted training actors
(`FoldProtocol` in `data_contracts.corpora.base`; docs/METHOD.md on the published figure).

Audio: 16 or 48 kHz; up to two channels (the originals include a few stereo files, recorded as
``channels = 2``; training down-mixes).
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

CORPUS = "ravdess"
LAYOUT = "Actor_{01..24}/03-01-EE-II-SS-RR-AA.wav (or .flac)"
LABELS = ("neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised")
EMOTIONS = {f"{i:02d}": name for i, name in enumerate(LABELS, start=1)}
_FOLDER = re.compile(r"^Actor_(\d\d)$")
_NAME = re.compile(r"^(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)$")


def _parse_name(path: str, folder_actor: str, result: ParseResult) -> Candidate | None:
    utt_id = stem(path)
    match = _NAME.match(utt_id)
    if match is None:
        result.quarantine_file(path, "bad_name", f"{path}: file name does not match {LAYOUT}")
        return None
    modality, channel, emotion, intensity, statement, repetition, actor = match.groups()
    if modality in ("01", "02"):
        result.out_of_scope["video"] += 1
        return None
    if channel == "02":
        result.out_of_scope["song"] += 1
        return None
    problems = []
    if modality != "03":
        problems.append(f"modality {modality} (expected 01, 02 or 03)")
    if channel != "01":
        problems.append(f"vocal channel {channel} (expected 01 speech or 02 song)")
    for field_name, value in (("intensity", intensity), ("statement", statement), ("repetition", repetition)):
        if value not in ("01", "02"):
            problems.append(f"{field_name} {value} (expected 01 or 02)")
    if not 1 <= int(actor) <= 24:
        problems.append(f"actor {actor} (expected 01..24)")
    if problems:
        result.quarantine_file(path, "bad_name", f"{path}: " + "; ".join(problems), utt_id)
        return None
    if emotion not in EMOTIONS:
        result.quarantine_file(
            path, "unknown_label", f"{path}: emotion field {emotion}, expected one of 01..08", utt_id
        )
        return None
    if emotion == "01" and intensity == "02":
        result.quarantine_file(path, "bad_name", f"{path}: neutral (01) has no strong intensity (02)", utt_id)
        return None
    if actor != folder_actor:
        result.quarantine_file(
            path,
            "actor_mismatch",
            f"{path}: actor field {actor} disagrees with folder Actor_{folder_actor}",
            utt_id,
        )
        return None
    return Candidate(
        utt_id=utt_id,
        corpus=CORPUS,
        path=path,
        speaker=f"Actor_{actor}",
        session=f"Actor_{actor}",
        gender="M" if int(actor) % 2 else "F",
        label=EMOTIONS[emotion],
        label_raw=emotion,
    )


def parse(listing: Listing, source: CorpusSource) -> ParseResult:
    """Candidate rows and parse-level quarantine rows of a RAVDESS root (`source` only names the
    root in the layout error: RAVDESS has no label files, every fact is in the file name)."""
    result = ParseResult(CORPUS)
    in_layout = 0
    for path in audio_paths(listing, result):
        parts = path.split("/")
        folder = _FOLDER.match(parts[0]) if len(parts) == 2 else None
        if folder is None:
            result.quarantine_file(path, "bad_name", f"{path}: audio file outside the layout {LAYOUT}")
            continue
        in_layout += 1
        candidate = _parse_name(path, folder.group(1), result)
        if candidate is not None:
            result.candidates.append(candidate)
    if in_layout == 0:
        raise no_audio_found(source, listing, "RAVDESS", LAYOUT)
    return result


SPEC = CorpusSpec(
    name=CORPUS,
    labels=LABELS,
    folds=FoldProtocol(grouping="speaker_blocks", block_size=4, validation="gender_balanced", min_groups=2),
    audio_checks=AudioChecks(sample_rates=frozenset({16000, 48000}), max_channels=2),
    parse=parse,
    doc=__doc__,
    licence="CC BY-NC-SA 4.0 (Zenodo 1188976): non-commercial use only; a model trained on it inherits the non-commercial, share-alike terms",
)
