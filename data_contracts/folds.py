"""Speaker-independent fold protocols of the paper, with validation speakers.

| corpus | test folds (paper) | validation speakers of fold k (ours) |
|---|---|---|
| iemocap | leave-one-session-out: 5 folds of one session (2 speakers) | both speakers of the next session, (k + 1) mod n |
| msp-improv | leave-one-session-out: 6 folds | both speakers of the next session |
| ravdess | actors sorted by number, consecutive groups of 4 (6 folds of 24 actors; 5 with actors 01-20) | one male and one female training actor, the (k mod m)-th of each gender's sorted training actors |
| savee | leave-one-speaker-out: 4 folds | the next speaker, (k + 1) mod n |

Folds are numbered from 0 in protocol order. Every speaker is the test speaker of exactly one
fold; in each fold, validation speakers are drawn only from the speakers that are not tested,
and every remaining speaker trains. Checkpoints are selected on the validation speakers, never
on the test speakers (docs/METHOD.md explains why the published RAVDESS figure needs this caveat).
"""

from __future__ import annotations

import re

import pandas as pd

from data_contracts.errors import FoldError
from data_contracts.schemas import FOLD_COLUMNS, validate_folds

RAVDESS_ACTORS_PER_FOLD = 4


def natural_key(name: str) -> tuple:
    """Sort key that orders embedded numbers numerically: session2 < session10."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


def _session_groups(manifest: pd.DataFrame) -> list[list[str]]:
    by_session = manifest.groupby("session")["speaker"].unique()
    return [sorted(by_session[s], key=natural_key) for s in sorted(by_session.index, key=natural_key)]


def _speaker_groups(manifest: pd.DataFrame) -> list[list[str]]:
    return [[s] for s in sorted(manifest["speaker"].unique(), key=natural_key)]


def _ravdess_groups(manifest: pd.DataFrame) -> list[list[str]]:
    actors = sorted(manifest["speaker"].unique(), key=natural_key)
    return [actors[i : i + RAVDESS_ACTORS_PER_FOLD] for i in range(0, len(actors), RAVDESS_ACTORS_PER_FOLD)]


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


PROTOCOLS = {
    "iemocap": (_session_groups, _next_group_valid, 3),
    "msp-improv": (_session_groups, _next_group_valid, 3),
    "ravdess": (_ravdess_groups, _gender_balanced_valid, 2),
    "savee": (_speaker_groups, _next_group_valid, 3),
}


def make_folds(manifest: pd.DataFrame) -> pd.DataFrame:
    """Fold table (FoldSchema): one row per (fold, speaker) with role train, valid or test.

    manifest: needs columns corpus (a single corpus), speaker, session, gender.
    Raises FoldError when the corpus is mixed or unknown, or when there are too few speaker
    groups to give every fold a test, a validation and a training speaker.
    """
    corpora = sorted(manifest["corpus"].unique())
    if len(corpora) != 1 or corpora[0] not in PROTOCOLS:
        raise FoldError(f"make_folds needs a manifest of one known corpus ({', '.join(PROTOCOLS)}); got {corpora}")
    corpus = corpora[0]
    grouping, validation, min_groups = PROTOCOLS[corpus]
    groups = grouping(manifest)
    if len(groups) < min_groups:
        raise FoldError(
            f"{corpus}: the fold protocol needs at least {min_groups} speaker groups (test, validation and "
            f"training speakers); found {len(groups)}: {groups}"
        )
    gender = dict(zip(manifest["speaker"], manifest["gender"]))
    rows = []
    for k, test in enumerate(groups):
        valid = validation(groups, k, gender)
        train = [s for i, g in enumerate(groups) if i != k for s in g if s not in valid]
        if not train:
            raise FoldError(f"{corpus}: fold {k} has no training speaker left after test {test} and validation {valid}")
        rows += [(k, s, "test") for s in test] + [(k, s, "valid") for s in valid] + [(k, s, "train") for s in train]
    table = pd.DataFrame(rows, columns=list(FOLD_COLUMNS)).astype({"fold": "int64", "speaker": "str", "role": "str"})
    table = table.sort_values(["fold", "speaker"], key=lambda c: c.map(natural_key) if c.name == "speaker" else c)
    return validate_folds(table.reset_index(drop=True))


def fold_of_speaker(folds: pd.DataFrame) -> dict[str, int]:
    """speaker -> the fold in which that speaker is the test speaker."""
    test = folds[folds["role"] == "test"]
    return {speaker: int(fold) for speaker, fold in zip(test["speaker"], test["fold"])}


def fold_split(manifest: pd.DataFrame, folds: pd.DataFrame, k: int) -> dict[str, pd.DataFrame]:
    """{"train", "valid", "test"} -> the manifest rows whose speaker has that role in fold `k`."""
    table = folds[folds["fold"] == k]
    if table.empty:
        raise FoldError(f"fold {k} is not in the fold table; folds are {sorted(folds['fold'].unique().tolist())}")
    split = {}
    for role in ("train", "valid", "test"):
        speakers = set(table.loc[table["role"] == role, "speaker"])
        split[role] = manifest[manifest["speaker"].isin(speakers)]
    return split
