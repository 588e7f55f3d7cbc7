"""Bad input ends in a quarantine row naming the file and the reason, or in a clear error;
good rows are never lost: N bad files give exactly N quarantine rows plus every good row."""

from __future__ import annotations

import os
import shutil

import pytest

from data_contracts.errors import CorpusLayoutError
from data_contracts.ingest import run_ingest
from tests.fixtures.corpora import (
    BAD_AUDIO_KINDS,
    assert_manifest_rows,
    emo_evaluation_line,
    make_iemocap,
    make_msp_improv,
    make_savee,
    ravdess_name,
    write_bad_audio,
    write_tone,
)

UNUSED = [ravdess_name(e, 1, 2, s, r) for e in range(2, 9) for s in (1, 2) for r in (1, 2)][-12:]


def ingest(corpus, root):
    return run_ingest(corpus, root, workers=1, progress=False)


def quarantine_by_path(result) -> dict[str, str]:
    return dict(zip(result.quarantine["path"], result.quarantine["reason_code"]))


@pytest.mark.parametrize("kind", [k for k in BAD_AUDIO_KINDS if k != "stereo"])
def test_each_bad_audio_file_is_quarantined_with_its_reason(ravdess_corpus, kind):
    root, rows = ravdess_corpus
    path = f"Actor_01/{UNUSED[0]}.wav"
    code = write_bad_audio(root / path, kind)
    result = ingest("ravdess", root)
    assert_manifest_rows(result.manifest, rows)
    (row,) = result.quarantine.itertuples()
    assert (row.path, row.utt_id, row.reason_code) == (path, UNUSED[0], code)
    assert row.reason.startswith(path)


def test_many_bad_files_give_exactly_that_many_quarantine_rows_and_keep_every_good_row(ravdess_corpus):
    root, rows = ravdess_corpus
    kinds = [k for k in BAD_AUDIO_KINDS if k != "stereo"]
    expected = {}
    for kind, stem in zip(kinds, UNUSED):
        expected[f"Actor_01/{stem}.wav"] = write_bad_audio(root / f"Actor_01/{stem}.wav", kind)
    expected["Actor_02/" + ravdess_name(3, 1) + ".wav"] = "actor_mismatch"
    write_tone(root / "Actor_02" / (ravdess_name(3, 1) + ".wav"))
    expected["Actor_03/" + ravdess_name(9, 3) + ".wav"] = "unknown_label"
    write_tone(root / "Actor_03" / (ravdess_name(9, 3) + ".wav"))
    original = next(r["path"] for r in rows if r["speaker"] == "Actor_01")
    shutil.copy(root / original, root / f"Actor_01/{UNUSED[-1]}.wav")
    expected[f"Actor_01/{UNUSED[-1]}.wav"] = "duplicate"
    result = ingest("ravdess", root)
    assert_manifest_rows(result.manifest, rows)
    assert quarantine_by_path(result) == expected
    assert len(result.quarantine) == len(expected)
    assert len(result.report["quarantined"]) == len(expected)


def test_actor_field_disagreeing_with_folder_names_both(ravdess_corpus):
    root, rows = ravdess_corpus
    write_tone(root / "Actor_05" / "03-01-05-01-01-01-02.wav")
    result = ingest("ravdess", root)
    assert_manifest_rows(result.manifest, rows)
    (row,) = result.quarantine.itertuples()
    assert row.reason == "Actor_05/03-01-05-01-01-01-02.wav: actor field 02 disagrees with folder Actor_05"


def test_stereo_is_quarantined_where_the_corpus_policy_is_mono(tmp_path):
    rows = make_savee(tmp_path, per_speaker=7)
    code = write_bad_audio(tmp_path / "AudioData/DC/a03.wav", "stereo", sample_rate=44100)
    result = ingest("savee", tmp_path)
    assert_manifest_rows(result.manifest, rows)
    assert quarantine_by_path(result) == {"AudioData/DC/a03.wav": code}
    assert "2 channels, expected at most 1" in result.quarantine["reason"].iloc[0]


def test_stereo_ravdess_is_accepted_and_recorded_as_two_channels(ravdess_corpus):
    root, rows = ravdess_corpus
    write_tone(root / f"Actor_01/{UNUSED[0]}.wav", channels=2)
    result = ingest("ravdess", root)
    assert result.quarantine.empty
    stereo = result.manifest[result.manifest["utt_id"] == UNUSED[0]]
    assert stereo["channels"].tolist() == [2]
    assert len(result.manifest) == len(rows) + 1


def test_symlink_leading_outside_the_root_is_quarantined(ravdess_corpus, tmp_path):
    root, rows = ravdess_corpus
    outside = write_tone(tmp_path / "outside" / "secret.wav")
    os.symlink(outside, root / f"Actor_01/{UNUSED[0]}.wav")
    os.symlink(tmp_path / "outside", root / "Actor_02" / "linked_dir")
    result = ingest("ravdess", root)
    assert_manifest_rows(result.manifest, rows)
    assert quarantine_by_path(result) == {
        f"Actor_01/{UNUSED[0]}.wav": "symlink_escape",
        "Actor_02/linked_dir": "symlink_escape",
    }


def test_symlink_inside_the_root_is_followed_and_a_loop_is_refused(ravdess_corpus):
    root, rows = ravdess_corpus
    os.symlink(root / "Actor_01", root / "Actor_09")
    os.symlink(root / "Actor_02", root / "Actor_02" / "loop")
    result = ingest("ravdess", root)
    assert_manifest_rows(result.manifest, rows)
    codes = quarantine_by_path(result)
    assert codes.pop("Actor_02/loop") == "symlink_loop"
    assert set(codes.values()) == {"actor_mismatch"}
    assert sorted(codes) == sorted(
        r["path"].replace("Actor_01", "Actor_09") for r in rows if r["speaker"] == "Actor_01"
    )


def test_non_utf8_file_name_is_quarantined_with_an_escaped_path(ravdess_corpus):
    root, rows = ravdess_corpus
    bad = os.path.join(os.fsencode(root / "Actor_01"), b"03-01-\xff\xfe.wav")
    with open(bad, "wb") as handle:
        handle.write(b"x")
    result = ingest("ravdess", root)
    assert_manifest_rows(result.manifest, rows)
    (row,) = result.quarantine.itertuples()
    assert (row.path, row.reason_code) == ("Actor_01/03-01-\\xff\\xfe.wav", "non_utf8_name")
    result.manifest.to_parquet(root.parent / "m.parquet")
    result.quarantine.to_parquet(root.parent / "q.parquet")


def _iemocap_label_file(root, session=1):
    return root / f"IEMOCAP_full_release/Session{session}/dialog/EmoEvaluation/Ses0{session}F_impro01.txt"


def test_iemocap_unknown_label_code_and_unlabelled_file_are_quarantined(tmp_path):
    rows = make_iemocap(tmp_path)
    label_file = _iemocap_label_file(tmp_path)
    wav_dir = tmp_path / "IEMOCAP_full_release/Session1/sentences/wav/Ses01F_impro01"
    write_tone(wav_dir / "Ses01F_impro01_F090.wav")
    write_tone(wav_dir / "Ses01F_impro01_F091.wav")
    with label_file.open("a") as handle:
        handle.write(emo_evaluation_line("Ses01F_impro01_F090", "zzz"))
    result = ingest("iemocap", tmp_path)
    assert_manifest_rows(result.manifest, rows)
    prefix = "IEMOCAP_full_release/Session1/sentences/wav/Ses01F_impro01/"
    assert quarantine_by_path(result) == {
        prefix + "Ses01F_impro01_F090.wav": "unknown_label",
        prefix + "Ses01F_impro01_F091.wav": "no_label",
    }


def test_iemocap_garbage_label_lines_are_reported_and_good_lines_still_read(tmp_path):
    rows = make_iemocap(tmp_path)
    label_file = _iemocap_label_file(tmp_path, 2)
    text = label_file.read_text()
    label_file.write_text("[1.0 - oops]\tSes02F_impro01_F099\tneu\n" + text + "[\ufffd garbage\n")
    result = ingest("iemocap", tmp_path)
    assert_manifest_rows(result.manifest, rows)
    relative = label_file.relative_to(tmp_path).as_posix()
    assert result.quarantine["path"].tolist() == [relative, relative]
    assert set(result.quarantine["reason_code"]) == {"label_line"}
    lines = len(label_file.read_text().splitlines())
    assert result.quarantine["reason"].str.contains("line 1:").any()
    assert result.quarantine["reason"].str.contains(f"line {lines}:").any()


def test_iemocap_missing_label_file_quarantines_each_file_of_its_dialog(tmp_path):
    rows = make_iemocap(tmp_path, sessions=range(1, 5))
    _iemocap_label_file(tmp_path, 3).unlink()
    result = ingest("iemocap", tmp_path)
    kept = [r for r in rows if r["session"] != "Ses03"]
    assert_manifest_rows(result.manifest, kept)
    assert len(result.quarantine) == len(rows) - len(kept)
    assert set(result.quarantine["reason_code"]) == {"no_label"}
    assert (
        result.quarantine["reason"]
        .str.contains("Session3/dialog/EmoEvaluation/Ses03F_impro01.txt is missing")
        .all()
    )


def test_iemocap_utterance_in_the_wrong_session_folder_is_quarantined(tmp_path):
    rows = make_iemocap(tmp_path)
    write_tone(
        tmp_path / "IEMOCAP_full_release/Session1/sentences/wav/Ses02F_impro01/Ses02F_impro01_F000.wav"
    )
    result = ingest("iemocap", tmp_path)
    assert_manifest_rows(result.manifest, rows)
    assert result.quarantine["reason_code"].tolist() == ["session_mismatch"]


def test_msp_improv_unknown_code_garbage_line_and_missing_label_file(tmp_path):
    rows = make_msp_improv(tmp_path)
    evaluation = tmp_path / "Evalution.txt"
    stem = "MSP-IMPROV-S09A-F01-P-FM09"
    write_tone(tmp_path / f"Audio/session1/S09A/P/{stem}.wav")
    evaluation.write_text(
        evaluation.read_text() + "UTD-IMPROV-S09A-F01-P-FM09.avi; Q; A:1\nUTD-IMPROV-garbage\n"
    )
    result = ingest("msp-improv", tmp_path)
    assert_manifest_rows(result.manifest, rows)
    assert quarantine_by_path(result) == {
        f"Audio/session1/S09A/P/{stem}.wav": "unknown_label",
        "Evalution.txt": "label_line",
    }
    evaluation.unlink()
    with pytest.raises(CorpusLayoutError, match="Evalution.txt not found"):
        ingest("msp-improv", tmp_path)


def test_savee_unknown_emotion_code_and_speaker_are_quarantined(tmp_path):
    rows = make_savee(tmp_path, per_speaker=7)
    write_tone(tmp_path / "AudioData/DC/x01.wav", sample_rate=44100)
    write_tone(tmp_path / "ALL/ZZ_a01.wav", sample_rate=44100)
    result = ingest("savee", tmp_path)
    assert_manifest_rows(result.manifest, rows)
    assert quarantine_by_path(result) == {
        "AudioData/DC/x01.wav": "unknown_label",
        "ALL/ZZ_a01.wav": "unknown_speaker",
    }


def test_corpus_where_every_file_is_bad_is_a_clear_error(tmp_path):
    from data_contracts.errors import IngestError

    for actor in (1, 2):
        write_bad_audio(tmp_path / f"Actor_{actor:02d}" / f"{ravdess_name(3, actor)}.wav", "silence")
    with pytest.raises(
        IngestError, match=r"no usable ravdess utterance \(2 candidates; quarantined by reason: silence: 2\)"
    ):
        ingest("ravdess", tmp_path)
