"""Schemas reject bad manifests naming the row; folds follow the protocol; fingerprints are stable."""

from __future__ import annotations

import pandas as pd
import pytest

from data_contracts.errors import FoldError, ManifestError
from data_contracts.fingerprint import PARSER_VERSION, manifest_fingerprint, source_fingerprint
from data_contracts.folds import fold_of_speaker, fold_rows_by_role, make_folds
from data_contracts.ingest import run_ingest
from data_contracts.schemas import validate_manifest
from data_contracts.source import LocalSource
from tests.fixtures.corpora import make_iemocap, make_msp_improv, make_ravdess, make_savee, write_tone


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> pd.DataFrame:
    root = tmp_path_factory.mktemp("ravdess")
    make_ravdess(root, actors=range(1, 9), per_actor=3)
    return run_ingest("ravdess", root, workers=1, progress=False).manifest


def test_valid_manifest_passes_unchanged(manifest):
    pd.testing.assert_frame_equal(validate_manifest(manifest.copy()), manifest)


def test_missing_column_is_named(manifest):
    with pytest.raises(ManifestError, match="column 'sha256' is missing"):
        validate_manifest(manifest.drop(columns=["sha256"]))


def test_unknown_label_names_row_utt_id_and_corpus(manifest):
    bad = manifest.copy()
    bad.loc[5, "label"] = "bored"
    with pytest.raises(ManifestError) as caught:
        validate_manifest(bad)
    assert f"row 5 (utt_id '{bad.loc[5, 'utt_id']}'): column 'label': 'bored' is not a ravdess label" in str(
        caught.value
    )
    assert "row 4 " not in str(caught.value)


def test_label_of_another_corpus_is_rejected(manifest):
    bad = manifest.copy()
    bad.loc[2, "corpus"] = "iemocap"
    bad.loc[2, "label"] = "calm"
    with pytest.raises(ManifestError, match="row 2 .*'calm' is not a iemocap label"):
        validate_manifest(bad)


def test_missing_utt_id_column_and_a_bad_label_are_both_reported(manifest):
    bad = manifest.drop(columns=["utt_id"])
    bad.loc[5, "label"] = "bored"
    with pytest.raises(ManifestError) as caught:
        validate_manifest(bad)
    assert "column 'utt_id' is missing" in str(caught.value)
    assert "row 5: column 'label': 'bored' is not a ravdess label" in str(caught.value)


def test_duplicate_utt_id_names_both_rows(manifest):
    bad = manifest.copy()
    bad.loc[7, "utt_id"] = bad.loc[3, "utt_id"]
    with pytest.raises(ManifestError) as caught:
        validate_manifest(bad)
    message = str(caught.value)
    utt = bad.loc[3, "utt_id"]
    assert f"row 3 (utt_id '{utt}'): column 'utt_id'" in message and f"row 7 (utt_id '{utt}')" in message
    assert "duplicate" in message


def speakers_frame(groups: dict[str, list[tuple[str, str]]], corpus: str) -> pd.DataFrame:
    """A minimal manifest: one row per (session, speaker, gender)."""
    return pd.DataFrame(
        [
            {"corpus": corpus, "session": session, "speaker": s, "gender": g}
            for session, sp in groups.items()
            for s, g in sp
        ]
    )


PROTOCOL_CASES = {
    "iemocap": (
        speakers_frame(
            {f"Ses{n:02d}": [(f"Ses{n:02d}F", "F"), (f"Ses{n:02d}M", "M")] for n in range(1, 6)}, "iemocap"
        ),
        5,
    ),
    "msp-improv": (
        speakers_frame(
            {f"session{n}": [(f"F{n:02d}", "F"), (f"M{n:02d}", "M")] for n in range(1, 7)}, "msp-improv"
        ),
        6,
    ),
    "ravdess-24": (
        speakers_frame(
            {f"Actor_{a:02d}": [(f"Actor_{a:02d}", "FM"[a % 2])] for a in range(1, 25)}, "ravdess"
        ),
        6,
    ),
    "ravdess-20": (
        speakers_frame(
            {f"Actor_{a:02d}": [(f"Actor_{a:02d}", "FM"[a % 2])] for a in range(1, 21)}, "ravdess"
        ),
        5,
    ),
    "savee": (speakers_frame({s: [(s, "M")] for s in ("DC", "JE", "JK", "KL")}, "savee"), 4),
}


@pytest.mark.parametrize("case", sorted(PROTOCOL_CASES))
def test_fold_protocol_properties(case):
    frame, n_folds = PROTOCOL_CASES[case]
    folds = make_folds(frame)
    assert folds["fold"].nunique() == n_folds
    speakers = set(frame["speaker"])
    tests = folds[folds["role"] == "test"]
    assert sorted(tests["speaker"]) == sorted(speakers)  # every speaker is test in exactly one fold
    session_of = dict(zip(frame["speaker"], frame["session"]))
    for k, table in folds.groupby("fold"):
        assert sorted(table["speaker"]) == sorted(speakers)  # each speaker has exactly one role per fold
        roles = {r: set(table.loc[table["role"] == r, "speaker"]) for r in ("train", "valid", "test")}
        assert roles["valid"] and roles["train"]
        assert not roles["valid"] & roles["test"] and not roles["train"] & roles["test"]
        if case.startswith("ravdess"):
            assert sorted(g for s, g in zip(frame["speaker"], frame["gender"]) if s in roles["valid"]) == [
                "F",
                "M",
            ]
            numbers = sorted(int(s[-2:]) for s in roles["test"])
            assert numbers == list(range(4 * k + 1, 4 * k + 5))
        else:
            assert len({session_of[s] for s in roles["test"]}) == 1
            assert {session_of[s] for s in roles["test"]} != {session_of[s] for s in roles["valid"]}
    assert fold_of_speaker(folds) == {s: int(k) for s, k in zip(tests["speaker"], tests["fold"])}


def test_folds_are_deterministic_and_independent_of_row_order():
    frame, _ = PROTOCOL_CASES["ravdess-20"]
    shuffled = frame.sample(frac=1, random_state=3)
    pd.testing.assert_frame_equal(make_folds(frame), make_folds(shuffled))


def test_too_few_sessions_is_a_clear_fold_error():
    frame = speakers_frame(
        {"Ses01": [("Ses01F", "F"), ("Ses01M", "M")], "Ses02": [("Ses02F", "F"), ("Ses02M", "M")]}, "iemocap"
    )
    with pytest.raises(FoldError, match="at least 3 speaker groups"):
        make_folds(frame)


def test_fold_split_partitions_the_manifest_by_role(manifest):
    folds = make_folds(manifest)
    for k in sorted(folds["fold"].unique()):
        split = fold_rows_by_role(manifest, folds, k)
        ids = [set(part["utt_id"]) for part in split.values()]
        assert sum(map(len, ids)) == len(manifest) and set.union(*ids) == set(manifest["utt_id"])
        assert (split["test"]["fold"] == k).all()
    with pytest.raises(FoldError, match="fold 99 is not in the fold table"):
        fold_rows_by_role(manifest, folds, 99)


def test_manifest_fingerprint_is_order_independent_and_matches_a_reference(manifest):
    import hashlib

    lines = sorted(
        f"{u}\t{s}\t{lab}\n" for u, s, lab in zip(manifest["utt_id"], manifest["sha256"], manifest["label"])
    )
    reference = hashlib.sha256((f"parser {PARSER_VERSION}\n" + "".join(lines)).encode()).hexdigest()
    assert manifest_fingerprint(manifest) == reference
    assert manifest_fingerprint(manifest.sample(frac=1, random_state=1)) == reference
    relabelled = manifest.copy()
    relabelled.loc[0, "label"] = "sad" if relabelled.loc[0, "label"] != "sad" else "calm"
    assert manifest_fingerprint(relabelled) != reference
    changed = manifest.copy()
    changed.loc[0, "sha256"] = "0" * 64
    assert manifest_fingerprint(changed) != reference
    moved = manifest.assign(path="elsewhere/" + manifest["path"])
    assert manifest_fingerprint(moved) == reference


def test_source_fingerprint_changes_with_files_not_with_reads(tmp_path):
    make_savee(tmp_path, per_speaker=2)
    source = LocalSource(tmp_path)
    first = source_fingerprint(source)
    source.read_bytes("AudioData/DC/a01.wav")
    assert source_fingerprint(source) == first
    write_tone(tmp_path / "AudioData/DC/n02.wav", sample_rate=44100)
    second = source_fingerprint(source)
    assert second != first
    write_tone(tmp_path / "AudioData/DC/n02.wav", key="another take", sample_rate=44100, seconds=0.6)
    assert source_fingerprint(source) != second


@pytest.mark.parametrize(
    "build, corpus", [(make_iemocap, "iemocap"), (make_msp_improv, "msp-improv"), (make_savee, "savee")]
)
def test_ingest_fills_fold_column_from_the_fold_table(tmp_path, build, corpus):
    build(tmp_path)
    result = run_ingest(corpus, tmp_path, workers=1, progress=False)
    test_fold = fold_of_speaker(result.folds)
    assert result.manifest["fold"].tolist() == [test_fold[s] for s in result.manifest["speaker"]]
