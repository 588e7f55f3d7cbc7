"""Stage a manifest's audio from any corpus root (``s3://bucket/prefix`` or a folder) into a
local cache, so a worker on any machine trains as from a local folder.

Layout under ``cache``:

    blobs/<sha256>                 each file once, named by the sha256 the manifest recorded
    trees/<manifest fingerprint>/  the manifest's relative paths, hard links to the blobs

A blob is verified against the manifest's sha256 after download (a mismatch is an error naming
the file, and nothing is kept) and reused by later stagings; the tree is what the worker gets as
its audio root. Fold runs on one machine may stage the same manifest at once: each writes its
own partial file and renames it atomically, so a blob is always whole. The cache is bounded: before downloading, the missing bytes must fit both the
free disk and ``max_bytes`` for the whole cache, else a clear error says how much is needed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pandas as pd

from data_contracts.source import CorpusSource, check_relative_path, open_source
from ser_stack.environment import SettingsError
from ser_stack.files import write_atomically
from ser_stack.process_settings import ProcessSettings


class StagingError(RuntimeError):
    """The audio cannot be staged: too little space, or a file whose bytes differ from the manifest."""


def cache_from_env(default_dir: Path, env: dict[str, str] | None = None) -> tuple[Path, int | None]:
    """Where a worker stages audio and how much the cache may hold: ``SER_AUDIO_CACHE_DIR``
    (default ``default_dir``) and ``SER_AUDIO_CACHE_BYTES`` (a positive integer; unset: no limit)
    of ``env`` (default: this process's; `ser_stack.process_settings.ProcessSettings`).
    StagingError naming a bad value."""
    try:
        knobs = ProcessSettings.from_env(env)
    except SettingsError as err:
        raise StagingError(str(err)) from None
    return (knobs.audio_cache_dir or default_dir).expanduser(), knobs.audio_cache_bytes


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file()) if folder.is_dir() else 0


def stage_audio(
    manifest: pd.DataFrame,
    root: str | CorpusSource,
    cache: Path,
    fingerprint: str,
    max_bytes: int | None = None,
) -> Path:
    """Make every manifest file available under ``cache/trees/<fingerprint>`` and return that folder.

    Files already in ``cache/blobs`` are reused without reading the source; the rest are
    downloaded, checked against the manifest's sha256 and linked into the tree.
    """
    source = open_source(root)
    blobs, tree = cache / "blobs", cache / "trees" / fingerprint
    blobs.mkdir(parents=True, exist_ok=True)
    wanted = dict(zip(manifest["path"].map(check_relative_path), manifest["sha256"]))
    missing = {sha: path for path, sha in wanted.items() if not (blobs / sha).exists()}
    if missing:
        sizes = {f.path: f.size for f in source.list_files().files}
        unknown = sorted(set(missing.values()) - set(sizes))
        if unknown:
            raise StagingError(
                f"{len(unknown)} manifest file(s) not found under {root}, e.g. {unknown[:3]}; was the corpus moved since ingest?"
            )
        need = sum(sizes[path] for path in missing.values())
        free = shutil.disk_usage(blobs).free
        held = _folder_bytes(blobs)
        if need > free or (max_bytes is not None and held + need > max_bytes):
            limit = (
                "no limit" if max_bytes is None else f"a limit of {max_bytes} bytes (SER_AUDIO_CACHE_BYTES)"
            )
            raise StagingError(
                f"staging {len(missing)} file(s) of {root} needs {need} bytes in {cache}; the cache holds "
                f"{held} bytes under {limit} and the disk has {free} bytes free: "
                "free space, raise the limit or point SER_AUDIO_CACHE_DIR at a larger disk"
            )
        for sha, path in missing.items():
            data = source.read_bytes(path)
            actual = hashlib.sha256(data).hexdigest()
            if actual != sha:
                raise StagingError(
                    f"{root}/{path}: sha256 {actual} differs from the manifest's {sha}; the file changed since ingest (ingest again)"
                )
            write_atomically(blobs / sha, data, durable=False)  # two fold runs may stage at once
    for path, sha in wanted.items():
        target = tree / path
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(blobs / sha, target)
            except FileExistsError:  # linked meanwhile by a fold run staging the same manifest
                pass
    return tree
