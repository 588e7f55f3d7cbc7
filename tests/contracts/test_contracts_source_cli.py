"""Sources keep every path inside the root (local and S3); the ingest CLI exits 2 on bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import boto3
import pandas as pd
import pytest
from moto import mock_aws

from data_contracts.errors import SourceError
from data_contracts.ingest import OUTPUT_FILES, report_markdown, run_ingest, write_ingest_outputs
from data_contracts.source import LocalSource, S3Source, check_relative_path, open_source
from tests.fixtures.corpora import assert_manifest_rows, make_ravdess, make_savee, ser_ingest


@pytest.mark.parametrize(
    "path", ["../x.wav", "a/../../x.wav", "/etc/passwd", "a//b.wav", "./a.wav", "", "a\\..\\b"]
)
def test_paths_that_could_leave_the_root_are_refused(tmp_path, path):
    with pytest.raises(SourceError, match="expected a relative POSIX path") as caught:
        LocalSource(tmp_path).read_bytes(path)
    assert caught.value.reason_code == "path_escape"
    with pytest.raises(SourceError):
        check_relative_path(path)


def test_reading_through_a_symlink_that_leaves_the_root_is_refused(tmp_path):
    (tmp_path / "root").mkdir()
    (tmp_path / "secret.txt").write_text("secret")
    (tmp_path / "root" / "link.wav").symlink_to(tmp_path / "secret.txt")
    with pytest.raises(SourceError, match="outside the corpus root") as caught:
        LocalSource(tmp_path / "root").read_bytes("link.wav")
    assert caught.value.reason_code == "symlink_escape"


def test_a_listed_file_replaced_by_a_symlink_is_not_followed(tmp_path):
    """Reads of listed files skip re-resolving their path (the listing checked it), but a file
    swapped for a link after the listing is refused, not read through the link."""
    (tmp_path / "root" / "Actor_01").mkdir(parents=True)
    (tmp_path / "secret.txt").write_text("secret")
    audio = tmp_path / "root" / "Actor_01" / "a.wav"
    audio.write_bytes(b"RIFF")
    source = LocalSource(tmp_path / "root")
    assert [f.path for f in source.list_files().files] == ["Actor_01/a.wav"]
    assert source.read_bytes("Actor_01/a.wav") == b"RIFF"
    audio.unlink()
    audio.symlink_to(tmp_path / "secret.txt")
    with pytest.raises(SourceError, match="Actor_01/a.wav: cannot read") as caught:
        source.read_bytes("Actor_01/a.wav")
    assert caught.value.reason_code == "read_error"
    assert LocalSource(tmp_path / "root").list_files().refused[0].reason_code == "symlink_escape"


def test_missing_root_is_a_clear_error(tmp_path):
    with pytest.raises(SourceError, match="is not a directory"):
        open_source(tmp_path / "nowhere")


@pytest.fixture
def s3_bucket(monkeypatch):
    for name in (
        "AWS_ENDPOINT_URL_S3",
        "AWS_ENDPOINT_URL",
    ):  # set by infra/env.sh; moto serves only AWS's own endpoints
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        client = boto3.client("s3")
        client.create_bucket(Bucket="corpora")
        yield client


def upload(client, local_root: Path, prefix: str) -> None:
    for path in sorted(p for p in local_root.rglob("*") if p.is_file()):
        client.upload_file(str(path), "corpora", f"{prefix}/{path.relative_to(local_root).as_posix()}")


def test_s3_source_ingests_like_the_local_folder(s3_bucket, tmp_path):
    rows = make_savee(tmp_path, per_speaker=3)
    upload(s3_bucket, tmp_path, "savee/v1")
    s3_bucket.put_object(Bucket="corpora", Key="savee/v1/AudioData/../../escape.wav", Body=b"x")
    source = open_source("s3://corpora/savee/v1")
    assert isinstance(source, S3Source)
    remote = run_ingest("savee", source, workers=1, progress=False)
    local = run_ingest("savee", tmp_path, workers=1, progress=False)
    assert_manifest_rows(remote.manifest, rows)
    pd.testing.assert_frame_equal(remote.manifest, local.manifest)
    assert remote.fingerprint == local.fingerprint
    assert remote.quarantine[["path", "reason_code"]].values.tolist() == [
        ["AudioData/../../escape.wav", "path_escape"]
    ]
    assert source.stat("AudioData/DC/a01.wav").size == (tmp_path / "AudioData/DC/a01.wav").stat().st_size
    with pytest.raises(SourceError, match="cannot read") as caught:
        source.read_bytes("AudioData/DC/missing.wav")
    assert caught.value.reason_code == "read_error"


def test_s3_source_pickles_without_its_client(s3_bucket):
    import pickle

    source = S3Source("s3://corpora/x")
    source.list_files()
    clone = pickle.loads(pickle.dumps(source))
    assert (clone.bucket, clone.prefix, clone._client) == ("corpora", "x", None)


def test_cli_ingest_writes_outputs_and_summary(tmp_path, capsys):
    rows = make_ravdess(tmp_path / "corpus", actors=range(1, 9), per_actor=2)
    assert ser_ingest(tmp_path / "corpus", tmp_path / "out") == 0
    out = capsys.readouterr().out
    assert f"ravdess: {len(rows)} utterances, 0 quarantined, 2 folds" in out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(OUTPUT_FILES)
    manifest = pd.read_parquet(tmp_path / "out" / "manifest.parquet")
    assert_manifest_rows(manifest, rows)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["fingerprint"] in out and report["utterances"] == len(rows)


def test_cli_bad_input_exits_2_with_a_message_and_no_traceback(tmp_path):
    make_ravdess(tmp_path / "corpus", actors=[1], per_actor=1)
    command = [
        sys.executable,
        "-c",
        "import sys; from flows.cli import main; sys.exit(main())",
        "ingest",
        "savee",
        str(tmp_path / "corpus"),
        "--out",
        str(tmp_path / "out"),
    ]
    done = subprocess.run(
        command, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2], timeout=120
    )
    assert done.returncode == 2
    assert "ser ingest: error:" in done.stderr and "expected the layout AudioData/" in done.stderr
    assert "Traceback" not in done.stderr


def test_report_markdown_lists_counts_and_every_quarantined_file(tmp_path):
    make_ravdess(tmp_path, actors=range(1, 9), per_actor=2)
    (tmp_path / "Actor_01" / "03-01-09-01-01-01-01.wav").write_bytes(b"")
    result = run_ingest("ravdess", tmp_path, workers=1, progress=False)
    text = report_markdown(result.report)
    assert "| Actor_01/03-01-09-01-01-01-01.wav | unknown_label |" in text
    for label, count in result.report["classes"].items():
        assert f"| {label} | {count} |" in text
    for speaker, count in result.report["speakers"].items():
        assert f"| {speaker} | {count} |" in text
    assert "| 0 | Actor_01, Actor_02, Actor_03, Actor_04 | Actor_05, Actor_06 | 8 / 4 / 4 |" in text
    paths = write_ingest_outputs(result, tmp_path / "out")
    quarantine = pd.read_parquet(paths["quarantine.parquet"])
    assert quarantine["path"].tolist() == ["Actor_01/03-01-09-01-01-01-01.wav"]


def test_cli_ingest_of_a_held_out_set_too_small_for_any_fold_protocol_writes_everything(tmp_path, capsys):
    """Four actors make one RAVDESS fold group where the protocol needs two: the manifest,
    quarantine and report are still written, the fold table is empty, every row's fold is
    missing, the report says why, and the command warns and exits 0."""
    rows = make_ravdess(tmp_path / "corpus", actors=range(17, 21), per_actor=2)
    (tmp_path / "corpus" / "Actor_17" / "03-01-09-01-01-01-17.wav").write_bytes(b"")
    assert ser_ingest(tmp_path / "corpus", tmp_path / "out") == 0
    captured = capsys.readouterr()
    assert f"ravdess: {len(rows)} utterances, 1 quarantined, 0 folds" in captured.out
    assert "warning: no fold protocol fits" in captured.err and "--split all" in captured.err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(OUTPUT_FILES)
    manifest = pd.read_parquet(tmp_path / "out" / "manifest.parquet")
    assert_manifest_rows(manifest, rows)
    assert manifest["fold"].isna().all()
    assert pd.read_parquet(tmp_path / "out" / "folds.parquet").empty
    assert pd.read_parquet(tmp_path / "out" / "quarantine.parquet")["path"].tolist() == [
        "Actor_17/03-01-09-01-01-01-17.wav"
    ]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["folds"] == {} and "at least 2 speaker groups" in report["no_fold_protocol"]
    assert "No fold protocol fits" in report_markdown(report)


def test_a_corpus_with_folds_says_so_in_its_report(tmp_path):
    make_ravdess(tmp_path, actors=range(1, 9), per_actor=1)
    report = run_ingest("ravdess", tmp_path, workers=1, progress=False).report
    assert report["no_fold_protocol"] is None and len(report["folds"]) == 2
