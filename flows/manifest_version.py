"""The manifest version a flow works on, opened once: :class:`ManifestVersion` (the corpus, its
fingerprint, the manifest and fold tables, the ingest report, the audio root), built only by
:func:`open_manifest_version`, which resolves ``latest`` to a fingerprint, checks the version
complete, validates its tables (flows/storage.py) and finds its audio root (flows/roots.py).

The train flow opens it and passes it down: to the monitor, the MLflow parent run, the fold runs and
the summary. A flow run that may be another process (a fold's ``train-fold`` run on a worker, the
``monitor`` subflow) receives it as plain parameters, :meth:`ManifestVersion.parameters` (corpus,
fingerprint, root), and opens it again with :func:`open_manifest_version`: the fingerprint names
the same tables, and the root it was given is kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from flows.roots import local_audio_root, manifest_root
from flows.storage import MANIFEST_FILES, DataBucket, read_manifest_tables, resolve_version


@dataclass(frozen=True, eq=False)
class ManifestVersion:
    """One complete manifest version of ``corpus``: its tables validated by data_contracts.schemas,
    ``root`` the folder or ``s3://`` prefix its manifest paths are relative to."""

    corpus: str
    fingerprint: str
    manifest: pd.DataFrame
    folds: pd.DataFrame
    report: dict[str, Any]
    root: str

    @property
    def fold_numbers(self) -> list[int]:
        """The folds of its protocol, sorted (none for a held-out set without one)."""
        return sorted(int(k) for k in self.folds["fold"].unique())

    @property
    def protocol(self) -> str:
        """Where its folds come from, for messages: ``the ravdess protocol of manifest <fingerprint>``."""
        return f"the {self.corpus} protocol of manifest {self.fingerprint}"

    def parameters(self) -> dict[str, str]:
        """What a flow run in another process receives to open the same version again."""
        return {"corpus": self.corpus, "fingerprint": self.fingerprint, "root": self.root}

    def local_audio_root(self, state_dir: Path) -> str:
        """A folder on this machine holding its audio: ``root`` itself, or for an ``s3://`` root
        the manifest's files staged under ``state_dir`` (flows.roots.local_audio_root)."""
        return local_audio_root(self.manifest, self.root, self.fingerprint, state_dir)

    def write_tables(self, folder: Path) -> tuple[Path, Path]:
        """The manifest and fold tables as Parquet files in ``folder``, named as ingest names them;
        returns their paths."""
        manifest_path, folds_path = folder / MANIFEST_FILES["manifest"], folder / MANIFEST_FILES["folds"]
        self.manifest.to_parquet(manifest_path, index=False)
        self.folds.to_parquet(folds_path, index=False)
        return manifest_path, folds_path


def open_manifest_version(
    corpus: str, version: str = "latest", root: str | None = None, bucket: DataBucket | None = None
) -> ManifestVersion:
    """``version`` (``latest`` or a fingerprint) of ``corpus`` from the data bucket, checked
    complete and valid, with its audio root: ``root`` if given, else the root recorded at ingest,
    else the configured one (flows.roots.manifest_root).

    Raises UnknownCorpusError or InvalidKeyPartError before any S3 call for a name outside the
    layout, ManifestVersionNotFoundError for a version not (completely) published, and ValueError
    when no audio root is a folder or ``s3://``."""
    bucket = bucket or DataBucket.from_env()
    fingerprint = resolve_version(corpus, version, bucket)
    manifest, folds, report = read_manifest_tables(corpus, fingerprint, bucket)
    audio_root = manifest_root(corpus, fingerprint, report, root, bucket)
    return ManifestVersion(corpus, fingerprint, manifest, folds, report, audio_root)
