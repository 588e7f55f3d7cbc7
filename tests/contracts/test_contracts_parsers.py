"""Each parser round-trips a fixture built from its corpus's documented layout and label format."""

from __future__ import annotations

import pandas as pd
import pytest

from data_contracts.corpora import parse_corpus
from data_contracts.errors import CorpusLayoutError, UnknownCorpusError
from data_contracts.ingest import run_ingest
from data_contracts.labels import LABELS
from data_contracts.source import LocalSource
from tests.fixtures.corpora import (
    assert_manifest_rows,
    make_iemocap,
    make_msp_improv,
    make_ravdess,
    make_savee,
)


def test_parser_candidates_equal_fixture_rows(any_corpus):
    corpus, root, rows = any_corpus
    parsed = parse_corpus(corpus, LocalSource(root))
    frame = pd.DataFrame([c.__dict__ for c in parsed.candidates])
    assert_manifest_rows(frame, [{k: v for k, v in r.items() if k != "sample_rate"} for r in rows])
    assert parsed.quarantine == []
    assert set(frame["label"]) <= set(LABELS[corpus])


def test_ingest_manifest_equals_fixture_rows(any_corpus):
    corpus, root, rows = any_corpus
    result = run_ingest(corpus, root, workers=1, progress=False)
    assert_manifest_rows(result.manifest, rows)
    assert result.quarantine.empty
    assert (result.manifest["channels"] == 1).all()
    assert result.manifest["duration_s"].round(3).eq(0.5).all()
    assert result.report["utterances"] == len(rows)
    assert sum(result.report["classes"].values()) == len(rows)


def test_ingest_with_two_worker_processes_matches_one_worker(ravdess_corpus):
    root, _ = ravdess_corpus
    serial = run_ingest("ravdess", root, workers=1, progress=False)
    parallel = run_ingest("ravdess", root, workers=2, progress=False)
    pd.testing.assert_frame_equal(serial.manifest, parallel.manifest)
    assert serial.fingerprint == parallel.fingerprint


@pytest.mark.parametrize(
    "build, corpus, out_of_scope, excluded",
    [
        (make_ravdess, "ravdess", {"not_audio": 1, "song": 1, "video": 1}, {}),
        (make_iemocap, "iemocap", {"dialog_audio": 3, "label_file": 3, "not_audio": 3}, {"fru": 3}),
        (make_msp_improv, "msp-improv", {"label_file": 1, "not_audio": 3}, {"O": 6}),
    ],
)
def test_out_of_scope_files_are_counted_not_mixed_in(tmp_path, build, corpus, out_of_scope, excluded):
    rows = build(tmp_path, out_of_scope=True)
    result = run_ingest(corpus, tmp_path, workers=1, progress=False)
    assert_manifest_rows(result.manifest, rows)
    assert result.quarantine.empty
    assert result.report["out_of_scope"] == out_of_scope
    assert result.report["excluded_by_protocol"] == excluded
    listed = result.report["files_listed"]
    assert listed == len(rows) + sum(out_of_scope.values()) + sum(excluded.values())


def test_iemocap_speaker_is_session_plus_gender_of_last_part(tmp_path):
    rows = make_iemocap(tmp_path, sessions=range(1, 4), per_speaker=3)
    result = run_ingest("iemocap", tmp_path, workers=1, progress=False)
    for row in result.manifest.itertuples():
        last_part = row.utt_id.rsplit("_", 1)[1]
        assert row.speaker == row.utt_id[:5] + last_part[0]
        assert row.gender == last_part[0]
    assert result.manifest["speaker"].nunique() == 6
    assert set(result.manifest.loc[result.manifest["label_raw"] == "exc", "label"]) == {"happy"}
    assert len(rows) == len(result.manifest)


def test_iemocap_root_may_be_the_release_folder_itself(tmp_path):
    rows = make_iemocap(tmp_path)
    result = run_ingest("iemocap", tmp_path / "IEMOCAP_full_release", workers=1, progress=False)
    prefix = "IEMOCAP_full_release/"
    assert_manifest_rows(result.manifest, [{**r, "path": r["path"][len(prefix) :]} for r in rows])


def test_savee_both_layouts_together_quarantine_second_copies_as_duplicates(tmp_path):
    rows = make_savee(tmp_path, per_speaker=3, layout="AudioData")
    copies = make_savee(tmp_path, per_speaker=3, layout="ALL")
    result = run_ingest("savee", tmp_path, workers=1, progress=False)
    assert_manifest_rows(result.manifest, copies)  # ALL/ sorts before AudioData/: its copies come first
    assert len(result.quarantine) == len(rows)
    assert set(result.quarantine["reason_code"]) == {"duplicate"}
    first_of = {r["utt_id"]: r["path"] for r in copies}
    for row in result.quarantine.itertuples():
        assert row.reason == f"duplicate_of {first_of[row.utt_id]}"


def test_savee_same_utt_id_with_different_audio_is_quarantined(tmp_path):
    make_savee(tmp_path, per_speaker=7, layout="ALL")
    from tests.fixtures.corpora import write_tone

    write_tone(tmp_path / "AudioData/DC/a01.wav", key="other take", sample_rate=44100)
    result = run_ingest("savee", tmp_path, workers=1, progress=False)
    assert len(result.manifest) == 28
    (row,) = result.quarantine.itertuples()
    assert (row.path, row.reason_code) == ("AudioData/DC/a01.wav", "duplicate_utt_id")
    assert "ALL/DC_a01.wav" in row.reason


@pytest.mark.parametrize("corpus", ["iemocap", "msp-improv", "ravdess", "savee"])
def test_root_in_another_layout_is_a_layout_error_naming_the_expected_layout(tmp_path, corpus):
    make_savee(tmp_path, per_speaker=2) if corpus != "savee" else make_ravdess(
        tmp_path, actors=[1], per_actor=2
    )
    with pytest.raises(CorpusLayoutError, match="expected the layout"):
        run_ingest(corpus, tmp_path, workers=1, progress=False)


def test_empty_corpus_root_is_a_layout_error(tmp_path):
    with pytest.raises(CorpusLayoutError, match="empty"):
        run_ingest("ravdess", tmp_path, workers=1, progress=False)


def test_unknown_corpus_name_is_a_clear_error(tmp_path):
    make_ravdess(tmp_path, actors=[1], per_actor=1)
    with pytest.raises(UnknownCorpusError, match="unknown corpus 'crema-d'"):
        parse_corpus("crema-d", LocalSource(tmp_path))
