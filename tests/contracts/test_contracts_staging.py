"""Staging a manifest's audio into the local cache: verified by sha256, reused, bounded."""

from __future__ import annotations

import hashlib
import re
import shutil

import pandas as pd
import pytest

from data_contracts.staging import StagingError, cache_from_env, stage_audio


def corpus(root, files: dict[str, bytes]) -> pd.DataFrame:
    for path, data in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)
    return pd.DataFrame(
        {"path": list(files), "sha256": [hashlib.sha256(d).hexdigest() for d in files.values()]}
    )


FILES = {"Actor_01/a.wav": b"a" * 1000, "Actor_02/b.wav": b"b" * 2000, "Actor_02/c.wav": b"a" * 1000}


def test_staged_tree_holds_every_manifest_file_and_is_reused_without_the_source(tmp_path):
    manifest = corpus(tmp_path / "src", FILES)
    tree = stage_audio(manifest, str(tmp_path / "src"), tmp_path / "cache", "f" * 64)
    assert {p: (tree / p).read_bytes() for p in FILES} == FILES
    assert len(list((tmp_path / "cache" / "blobs").iterdir())) == 2, "identical files are stored once"
    shutil.rmtree(tmp_path / "src")
    (tmp_path / "src").mkdir()
    again = stage_audio(manifest, str(tmp_path / "src"), tmp_path / "cache", "e" * 64)
    assert {p: (again / p).read_bytes() for p in FILES} == FILES


def test_a_file_changed_since_ingest_is_refused_and_not_kept(tmp_path):
    manifest = corpus(tmp_path / "src", FILES)
    (tmp_path / "src" / "Actor_02" / "b.wav").write_bytes(b"changed")
    with pytest.raises(StagingError, match=r"Actor_02/b.wav: sha256 .* differs from the manifest"):
        stage_audio(manifest, str(tmp_path / "src"), tmp_path / "cache", "f" * 64)
    assert not (tmp_path / "cache" / "blobs" / manifest["sha256"][1]).exists()


def test_a_cache_too_small_is_a_clear_error_before_any_download(tmp_path):
    manifest = corpus(tmp_path / "src", FILES)
    with pytest.raises(
        StagingError, match=r"needs 3000 bytes .* limit of 2500 bytes \(SER_AUDIO_CACHE_BYTES\)"
    ):
        stage_audio(manifest, str(tmp_path / "src"), tmp_path / "cache", "f" * 64, max_bytes=2500)
    assert not list((tmp_path / "cache" / "blobs").iterdir())
    stage_audio(manifest, str(tmp_path / "src"), tmp_path / "cache", "f" * 64, max_bytes=3000)


def test_staging_from_s3_reads_the_bucket(tmp_path, monkeypatch):
    """Fast check of the S3 path with moto; the live stack's SeaweedFS is exercised by the e2e test."""
    moto = pytest.importorskip("moto")
    import boto3

    for key in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with moto.mock_aws():
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="corpora")
        manifest = corpus(tmp_path / "src", FILES)
        for path, data in FILES.items():
            s3.put_object(Bucket="corpora", Key=f"ravdess/{path}", Body=data)
        tree = stage_audio(manifest, "s3://corpora/ravdess", tmp_path / "cache", "f" * 64)
        assert {p: (tree / p).read_bytes() for p in FILES} == FILES


def test_cache_settings_from_the_environment(tmp_path):
    assert cache_from_env(tmp_path / "default", {}) == (tmp_path / "default", None)
    assert cache_from_env(
        tmp_path / "default", {"SER_AUDIO_CACHE_DIR": str(tmp_path / "big"), "SER_AUDIO_CACHE_BYTES": "2500"}
    ) == (tmp_path / "big", 2500)
    for bad in ("50GB", "-1", "0", "1e9"):
        with pytest.raises(
            StagingError,
            match=rf"SER_AUDIO_CACHE_BYTES='{re.escape(bad)}': expected a positive number of bytes",
        ):
            cache_from_env(tmp_path, {"SER_AUDIO_CACHE_BYTES": bad})
