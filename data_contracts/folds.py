"""Speaker-independent folds with validation speakers, built from a corpus's `FoldProtocol`.

Each corpus's spec (`data_contracts.corpora.SPECS`) holds its protocol as data; this module
interprets it:

| FoldProtocol | test groups, one fold each | validation speakers of fold k |
|---|---|---|
| grouping ``session`` | the speakers of one session | |
| grouping ``speaker`` | one speaker | |
| grouping ``speaker_blocks``, block_size b | consecutive blocks of b speakers | |
| grouping ``label_stratified``, fold_count k | min(k, speakers) groups of speakers with alike label distributions (`stratified_speaker_groups`) | |
| validation ``next_group`` | | the test group of fold (k + 1) mod n |
| validation ``gender_balanced`` | | one male and one female training speaker, the (k mod m)-th of each gender's sorted training speakers |

Sessions and speakers are sorted in natural order (session2 before session10). The paper's
protocols (leave-one-session-out for IEMOCAP and MSP-IMPROV, blocks of 4 actors for RAVDESS,
leave-one-speaker-out for SAVEE) are documented in each corpus's module.

Folds are numbered from 0 in protocol order. Every speaker is the test speaker of exactly one
fold; in each fold, validation speakers are drawn only from the speakers that are not tested,
and every remaining speaker trains. Checkpoints are selected on the validation speakers, never
on the test speakers (docs/METHOD.md explains why the published RAVDESS figure needs this caveat).
"""

from __future__ import annotations

import re

import pandas as pd

from data_contracts.corpora import SPECS
from data_contracts.corpora.base import FoldProtocol
from data_contracts.errors import FoldError
from data_contracts.schemas import FOLD_COLUMNS, validate_folds


def natural_key(name: str) -> tuple:
    """Sort key that orders embedded numbers numerically: session2 < session10."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


def _speakers(manifest: pd.DataFrame) -> list[str]:
    return sorted(manifest["speaker"].unique(), key=natural_key)


def _session_groups(manifest: pd.DataFrame, protocol: FoldProtocol) -> list[list[str]]:
    by_session = manifest.groupby("session")["speaker"].unique()
    return [sorted(by_session[s], key=natural_key) for s in sorted(by_session.index, key=natural_key)]


def _speaker_groups(manifest: pd.DataFrame, protocol: FoldProtocol) -> list[list[str]]:
    return [[s] for s in _speakers(manifest)]


def _speaker_block_groups(manifest: pd.DataFrame, protocol: FoldProtocol) -> list[list[str]]:
    speakers, size = _speakers(manifest), protocol.block_size
    return [speakers[i : i + size] for i in range(0, len(speakers), size)]


def label_share_spread(counts: list[dict[str, int]], totals: dict[str, int]) -> float:
    """How unlike the groups' label distributions are: sum over labels l of the variance across
    groups g of the share p_{g,l} = n_{g,l} / n_l of label l's utterances held by group g
    (0 when every group holds the same share of every label)."""
    spread = 0.0
    for label, total in totals.items():
        shares = [group.get(label, 0) / total for group in counts]
        mean = sum(shares) / len(shares)
        spread += sum((share - mean) ** 2 for share in shares) / len(shares)
    return spread


def _joined(counts: list[dict[str, int]], g: int, adds: dict[str, int]) -> list[dict[str, int]]:
    """`counts` with the label counts `adds` added to group `g`'s."""
    joined = [dict(c) for c in counts]
    for label, n in adds.items():
        joined[g][label] = joined[g].get(label, 0) + n
    return joined


def stratified_speaker_groups(manifest: pd.DataFrame, fold_count: int) -> list[list[str]]:
    """min(`fold_count`, speakers) test groups of whole speakers, stratified by label (greedy).

    Speakers are taken in order of decreasing utterance count (natural order breaks ties); each
    joins the group that leaves the smallest `label_share_spread`, ties going to the group with
    fewer utterances, then the lower index. While as many groups are empty as speakers remain,
    only the empty groups are candidates, so no group ends empty.
    """
    per_speaker = manifest.groupby("speaker")["label"].value_counts()
    speakers = sorted(_speakers(manifest), key=lambda s: (-int(per_speaker[s].sum()), natural_key(s)))
    totals = {str(label): int(n) for label, n in manifest["label"].value_counts().items()}
    k = min(fold_count, len(speakers))
    groups: list[list[str]] = [[] for _ in range(k)]
    counts: list[dict[str, int]] = [{} for _ in range(k)]
    for remaining, speaker in zip(range(len(speakers), 0, -1), speakers):
        empty = [g for g in range(k) if not groups[g]]
        adds = {str(label): int(n) for label, n in per_speaker[speaker].items()}
        best = min(
            empty if len(empty) >= remaining else range(k),
            key=lambda g: (
                label_share_spread(_joined(counts, g, adds), totals),
                sum(counts[g].values()),
                g,
            ),
        )
        groups[best].append(speaker)
        counts = _joined(counts, best, adds)
    return [sorted(group, key=natural_key) for group in groups]


def _label_stratified_groups(manifest: pd.DataFrame, protocol: FoldProtocol) -> list[list[str]]:
    return stratified_speaker_groups(manifest, protocol.fold_count)


def _next_group_valid(groups: list[list[str]], k: int, gender: dict[str, str]) -> list[str]:
    return groups[(k + 1) % len(groups)]


def _gender_balanced_valid(groups: list[list[str]], k: int, gender: dict[str, str]) -> list[str]:
    train = sorted((s for i, g in enumerate(groups) if i != k for s in g), key=natural_key)
    valid = []
    for sex in ("M", "F"):
        pool = [s for s in train if gender[s] == sex]
        if pool:
            valid.append(pool[k % len(pool)])
    return valid


GROUPING = {
    "session": _session_groups,
    "speaker": _speaker_groups,
    "speaker_blocks": _speaker_block_groups,
    "label_stratified": _label_stratified_groups,
}
"""FoldProtocol.grouping -> the function that returns the test groups of a manifest."""
VALIDATION = {"next_group": _next_group_valid, "gender_balanced": _gender_balanced_valid}
"""FoldProtocol.validation -> the function that returns fold k's validation speakers."""


def make_folds(manifest: pd.DataFrame) -> pd.DataFrame:
    """Fold table (FoldSchema): one row per (fold, speaker) with role train, valid or test.

    manifest: needs columns corpus (a single registered corpus, whose spec's FoldProtocol is
    used), speaker, session, gender. Raises FoldError when the corpus is mixed or unknown, or
    when there are too few speaker groups to give every fold a test, a validation and a training
    speaker.
    """
    corpora = sorted(manifest["corpus"].unique())
    if len(corpora) != 1 or corpora[0] not in SPECS:
        raise FoldError(
            f"make_folds needs a manifest of one known corpus ({', '.join(SPECS)}); got {corpora}"
        )
    corpus = corpora[0]
    protocol = SPECS[corpus].folds
    groups = GROUPING[protocol.grouping](manifest, protocol)
    if len(groups) < protocol.min_groups:
        raise FoldError(
            f"{corpus}: the fold protocol needs at least {protocol.min_groups} speaker groups (test, validation and "
            f"training speakers); found {len(groups)}: {groups}"
        )
    gender = dict(zip(manifest["speaker"], manifest["gender"]))
    rows = []
    for k, test in enumerate(groups):
        valid = VALIDATION[protocol.validation](groups, k, gender)
        train = [s for i, g in enumerate(groups) if i != k for s in g if s not in valid]
        if not train:
            raise FoldError(
                f"{corpus}: fold {k} has no training speaker left after test {test} and validation {valid}"
            )
        rows += (
            [(k, s, "test") for s in test]
            + [(k, s, "valid") for s in valid]
            + [(k, s, "train") for s in train]
        )
    table = pd.DataFrame(rows, columns=list(FOLD_COLUMNS)).astype(
        {"fold": "int64", "speaker": "str", "role": "str"}
    )
    table = table.sort_values(
        ["fold", "speaker"], key=lambda c: c.map(natural_key) if c.name == "speaker" else c
    )
    return validate_folds(table.reset_index(drop=True))


def given_split_folds(split_of_speaker: dict[str, str]) -> pd.DataFrame:
    """The fold table of a given protocol (a table's ``split`` column): one fold, 0, in which
    each speaker has the role of its split (``train``, ``valid`` or ``test``)."""
    rows = [(0, speaker, split_of_speaker[speaker]) for speaker in sorted(split_of_speaker, key=natural_key)]
    table = pd.DataFrame(rows, columns=list(FOLD_COLUMNS)).astype(
        {"fold": "int64", "speaker": "str", "role": "str"}
    )
    return validate_folds(table)


def fold_of_speaker(folds: pd.DataFrame) -> dict[str, int]:
    """speaker -> the fold in which that speaker is the test speaker."""
    test = folds[folds["role"] == "test"]
    return {speaker: int(fold) for speaker, fold in zip(test["speaker"], test["fold"])}


def fold_rows_by_role(manifest: pd.DataFrame, folds: pd.DataFrame, k: int) -> dict[str, pd.DataFrame]:
    """{"train", "valid", "test"} -> the manifest rows whose speaker has that role in fold `k` of the
    fold table (`k` >= 0; the release model's split is `ser_model.train.training_splits`)."""
    table = folds[folds["fold"] == k]
    if table.empty:
        raise FoldError(
            f"fold {k} is not in the fold table; folds are {sorted(folds['fold'].unique().tolist())}"
        )
    split = {}
    for role in ("train", "valid", "test"):
        speakers = set(table.loc[table["role"] == role, "speaker"])
        split[role] = manifest[manifest["speaker"].isin(speakers)]
    return split
