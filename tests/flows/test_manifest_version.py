"""flows.manifest_version: a manifest version opened once (fingerprint, tables, report, audio root),
and opened again on the far side of a process boundary from its parameters alone.

On moto's in-memory S3 (the ``bucket`` fixture); every root here is a real folder, so the
configured roots (a Prefect Variable) are never consulted.
"""

from __future__ import annotations

import pandas as pd
import pytest

from data_contracts.errors import UnknownCorpusError
from flows.manifest_version import open_manifest_version
from flows.storage import ManifestVersionNotFoundError, object_key
from tests.flows.test_storage import count_calls, publish, tiny_version


def published(bucket, root, label_shift: int = 0) -> dict:
    """A tiny RAVDESS version published from ``root`` (recorded in its report too, as ingest does)."""
    version = tiny_version(label_shift=label_shift)
    version["root"] = str(root)
    version["report"] = {**version["report"], "root": str(root)}
    publish(bucket, version)
    return version


def assert_same_tables(data, version: dict) -> None:
    pd.testing.assert_frame_equal(
        data.manifest.reset_index(drop=True), version["manifest"], check_dtype=False
    )
    pd.testing.assert_frame_equal(
        data.folds.reset_index(drop=True), version["folds"].reset_index(drop=True), check_dtype=False
    )
    assert data.report == version["report"]


def test_latest_opens_with_its_tables_and_the_root_recorded_at_ingest(bucket, tmp_path):
    version = published(bucket, tmp_path)
    data = open_manifest_version("ravdess", "latest", bucket=bucket)
    assert (data.corpus, data.fingerprint, data.root) == ("ravdess", version["fingerprint"], str(tmp_path))
    assert_same_tables(data, version)
    assert data.fold_numbers == sorted(set(version["folds"]["fold"]))
    assert version["fingerprint"] in data.protocol and "ravdess" in data.protocol


def test_the_latest_pointer_root_applies_only_to_the_version_it_names(bucket, tmp_path):
    """The same manifest published again from another root moves latest's root; an older version
    keeps the root of its own ingest report."""
    first, second, moved = (tmp_path / name for name in ("first", "second", "moved"))
    for folder in (first, second, moved):
        folder.mkdir()
    old = published(bucket, first)
    new = published(bucket, second, label_shift=1)
    publish(bucket, {**new, "root": str(moved)})
    assert open_manifest_version("ravdess", new["fingerprint"], bucket=bucket).root == str(moved)
    assert open_manifest_version("ravdess", old["fingerprint"], bucket=bucket).root == str(first)


def test_the_far_side_opens_the_same_version_from_its_parameters_without_the_pointer(bucket, tmp_path):
    """What crosses to a fold's flow run (corpus, fingerprint, root) opens the same tables and keeps
    the root given, reading only the version's own objects (latest may have moved meanwhile)."""
    version = published(bucket, tmp_path)
    given = tmp_path / "mounted-here"
    given.mkdir()
    near = open_manifest_version("ravdess", "latest", str(given), bucket)
    parameters = near.parameters()
    assert parameters == {"corpus": "ravdess", "fingerprint": version["fingerprint"], "root": str(given)}
    gets = count_calls(bucket, "GetObject")
    far = open_manifest_version(parameters["corpus"], parameters["fingerprint"], parameters["root"], bucket)
    assert (far.fingerprint, far.root) == (near.fingerprint, near.root)
    assert_same_tables(far, version)
    assert any(key.endswith(object_key("manifest", "ravdess", far.fingerprint)) for key in gets), gets
    assert not any(key.endswith(object_key("latest", "ravdess")) for key in gets), gets


def test_an_audio_root_that_is_no_folder_is_refused_naming_how_to_set_one(bucket, tmp_path):
    published(bucket, tmp_path)
    with pytest.raises(ValueError, match="neither a folder nor s3://; pass root=DIR"):
        open_manifest_version("ravdess", "latest", str(tmp_path / "missing"), bucket)
    assert open_manifest_version("ravdess", "latest", "s3://corpora/ravdess", bucket).root == (
        "s3://corpora/ravdess"
    )


def test_unknown_corpora_and_missing_versions_are_refused(bucket, tmp_path):
    with pytest.raises(UnknownCorpusError, match="unknown dataset 'Crema D'"):
        open_manifest_version("Crema D", bucket=bucket)
    with pytest.raises(
        ManifestVersionNotFoundError, match=r"run the ingest-table deployment \(--param name=crema-d"
    ):
        open_manifest_version("crema-d", bucket=bucket)
    with pytest.raises(ManifestVersionNotFoundError, match="run the ingest-savee deployment first"):
        open_manifest_version("savee", bucket=bucket)


def test_a_local_root_is_read_in_place_and_the_tables_are_written_as_ingest_names_them(bucket, tmp_path):
    version = published(bucket, tmp_path)
    data = open_manifest_version("ravdess", bucket=bucket)
    assert data.local_audio_root(tmp_path / "state") == str(tmp_path)
    assert not (tmp_path / "state").exists(), "nothing staged for a folder root"
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    manifest_path, folds_path = data.write_tables(inputs)
    assert (manifest_path.name, folds_path.name) == ("manifest.parquet", "folds.parquet")
    pd.testing.assert_frame_equal(pd.read_parquet(manifest_path), version["manifest"], check_dtype=False)
    pd.testing.assert_frame_equal(
        pd.read_parquet(folds_path), version["folds"].reset_index(drop=True), check_dtype=False
    )
