"""The frozen-backbone feature cache (ser_model.feature_cache) shared through S3, so that fold runs
on any machine compute a backbone's hidden states once.

Locally the worker reads and fills one folder per machine, ``SER_FEATURE_CACHE_DIR`` (default
``<state>/feature-cache``), shared by every run there, so a retrain on the same machine reuses it.
In the data bucket the same key folders (``ser_model.feature_cache_folder``) live under
``feature-cache/``::

    feature-cache/<digest>/key.json
    feature-cache/<digest>/index.json
    feature-cache/<digest>/entries/<audio sha256>.safetensors

:func:`pull`, before the worker starts: the remote key folders that can be this config's
(``key_may_fit``: the backbone source, the layer set and the view match; the worker checks the
whole key, so a superfluous folder only costs its download) give the entries missing locally,
each checked against the sha256 in the remote index before it is kept (a corrupt, truncated or
missing object is skipped with a warning, and the worker recomputes it).

:func:`push`, after the worker succeeded: the local key folders that can be this config's send
the entries S3 lacks (checked against the local index first; an object of another size, or one
that :func:`pull` found corrupt, is replaced), then the remote index gains their records
(the union of what it holds and what was sent). Entries are content-addressed (by the audio's
sha256), so two folds pushing at once cannot clash on an entry; the index update is a read, a
merge and a write, and the update of one of two racing folds can be lost: the entries it names
then only miss from the index, and the next fold that needs them recomputes and pushes them.

Both are a cache: S3 unreachable or refusing makes :func:`shared_feature_cache` log a warning and
go on (the worker computes what it does not find).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Collection, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from flows.storage import DataBucket, StorageUnavailableError
from ser_model.config import SERConfig, uses_feature_cache
from ser_model.feature_cache_folder import (
    ENTRIES_DIR,
    FEATURE_CACHE_DIR,
    INDEX_FILE,
    KEY_FILE,
    IndexEntry,
    entry_path,
    index_from_json,
    index_json,
    key_digest,
    key_may_fit,
    merge_index,
    read_index,
    write_key_file,
)
from ser_stack.files import write_atomically
from ser_stack.process_settings import ProcessSettings
from ser_stack.settings import StackSettings

__all__ = ["PREFIX", "Pulled", "local_feature_cache_dir", "pull", "push", "shared_feature_cache"]

log = logging.getLogger(__name__)

PREFIX = f"{FEATURE_CACHE_DIR}/"
#: parallel transfers of entries (boto3 clients are thread-safe)
TRANSFERS = 8
_DIGEST = re.compile(r"[0-9a-f]{16}")
_ENTRY_NAME = re.compile(r"[0-9A-Za-z_-][0-9A-Za-z._-]{0,127}")


def local_feature_cache_dir(settings: StackSettings, env: Mapping[str, str] | None = None) -> Path:
    """The machine's feature-cache folder: ``SER_FEATURE_CACHE_DIR`` of ``env`` (default: this
    process's), unset ``<state>/feature-cache``."""
    return ProcessSettings.from_env(env).feature_cache_dir or settings.state_dir / FEATURE_CACHE_DIR


@dataclass(frozen=True)
class Pulled:
    """What :func:`pull` did: the key folders it took entries from, how many it downloaded, and
    per folder the entries whose remote object failed its check (for :func:`push` to replace)."""

    folders: tuple[str, ...] = ()
    downloaded: int = 0
    corrupt: Mapping[str, frozenset[str]] = field(default_factory=dict)


def _remote_json(bucket: DataBucket, key: str) -> Any | None:
    """A JSON object of the bucket, or None when it is missing or not JSON (with a warning)."""
    try:
        return json.loads(bucket.get_bytes(key))
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return None
        raise
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        log.warning("feature cache s3://%s/%s is not JSON (%s); ignored", bucket.name, key, exc)
        return None


def _remote_index(bucket: DataBucket, digest: str) -> dict[str, IndexEntry]:
    raw = _remote_json(bucket, f"{PREFIX}{digest}/{INDEX_FILE}")
    if raw is None:
        return {}
    try:
        entries = index_from_json(raw)
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        log.warning(
            "feature cache s3://%s/%s%s/%s is malformed (%s); ignored",
            bucket.name,
            PREFIX,
            digest,
            INDEX_FILE,
            exc,
        )
        return {}
    return {sha: entry for sha, entry in entries.items() if _ENTRY_NAME.fullmatch(sha)}


def _local_json(path: Path) -> Any | None:
    """A local JSON file, or None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _fits(record: Any, digest: str, config: SERConfig, where: str) -> bool:
    """Whether a key.json record can be ``config``'s key and names its folder ``digest``."""
    if not isinstance(record, dict) or not key_may_fit(record, config):
        return False
    if key_digest(record["key"]) != digest:
        log.warning(
            "feature cache %s: key.json's key has digest %s, not the folder's name %s; ignored",
            where,
            key_digest(record["key"]),
            digest,
        )
        return False
    return True


def pull(config: SERConfig, root: Path, bucket: DataBucket, wanted: Collection[str] | None = None) -> Pulled:
    """Download into ``root`` the entries of the remote key folders that can be ``config``'s and
    that ``root`` lacks (only those of ``wanted`` audio sha256s when given), each checked against
    the remote index's sha256 (module docstring)."""
    wanted = None if wanted is None else set(wanted)
    folders, downloaded, corrupt = [], 0, {}
    for prefix in bucket.list_prefixes(PREFIX):
        digest = prefix[len(PREFIX) :].rstrip("/")
        if not _DIGEST.fullmatch(digest):
            continue
        record = _remote_json(bucket, f"{prefix}{KEY_FILE}")
        if not _fits(record, digest, config, f"s3://{bucket.name}/{prefix}"):
            continue
        folder = root / digest
        (folder / ENTRIES_DIR).mkdir(parents=True, exist_ok=True)
        if not (folder / KEY_FILE).is_file():
            write_key_file(folder, record["key"], record["source"])
        local = read_index(folder)
        todo = {
            sha: entry
            for sha, entry in _remote_index(bucket, digest).items()
            if (wanted is None or sha in wanted)
            and (sha not in local or not entry_path(folder, sha).is_file())
        }

        def fetch(item: tuple[str, IndexEntry]) -> tuple[str, str | None]:
            sha, entry = item
            key = f"{prefix}{ENTRIES_DIR}/{sha}.safetensors"
            try:
                data = bucket.get_bytes(key)
            except ClientError as exc:
                return sha, f"unreadable ({exc})"
            checksum = hashlib.sha256(data).hexdigest()
            if checksum != entry.checksum:
                return (
                    sha,
                    f"sha256 {checksum[:12]}… of {len(data)} bytes, the index says {entry.checksum[:12]}…",
                )
            write_atomically(entry_path(folder, sha), data)
            return sha, None

        with ThreadPoolExecutor(TRANSFERS) as pool:
            outcomes = dict(pool.map(fetch, todo.items()))
        for sha, problem in sorted(outcomes.items()):
            if problem is not None:
                log.warning(
                    "feature cache s3://%s/%s%s/%s.safetensors: %s; not used, the worker recomputes it",
                    bucket.name,
                    prefix,
                    ENTRIES_DIR,
                    sha,
                    problem,
                )
        good = {sha: todo[sha] for sha, problem in outcomes.items() if problem is None}
        merge_index(folder, record["key"], good)
        folders.append(digest)
        downloaded += len(good)
        corrupt[digest] = frozenset(sha for sha, problem in outcomes.items() if problem is not None)
        log.info(
            "feature cache %s: %d entries downloaded from s3://%s/%s, %d skipped as corrupt",
            folder,
            len(good),
            bucket.name,
            prefix,
            len(corrupt[digest]),
        )
    return Pulled(tuple(folders), downloaded, corrupt)


def push(
    config: SERConfig, root: Path, bucket: DataBucket, replace: Mapping[str, Collection[str]] | None = None
) -> int:
    """Upload the entries of ``root``'s key folders that can be ``config``'s and that S3 lacks,
    then merge their records into the remote index (module docstring). ``replace``: per folder,
    entries to upload even when S3 has them (:attr:`Pulled.corrupt`). Returns the entries uploaded."""
    replace = replace or {}
    uploaded = 0
    for folder in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        record = _local_json(folder / KEY_FILE)
        if not _fits(record, folder.name, config, str(folder)):
            continue
        local = {sha: entry for sha, entry in read_index(folder).items() if _ENTRY_NAME.fullmatch(sha)}
        prefix = f"{PREFIX}{folder.name}/"
        sizes = bucket.list_sizes(prefix)
        remote = _remote_index(bucket, folder.name)
        stale = set(replace.get(folder.name, ()))

        def in_s3(sha: str) -> bool:
            size = sizes.get(f"{prefix}{ENTRIES_DIR}/{sha}.safetensors")
            path = entry_path(folder, sha)
            return (
                sha in remote
                and sha not in stale
                and size is not None
                and path.is_file()
                and size == path.stat().st_size
            )

        def send(sha: str) -> str | None:
            path = entry_path(folder, sha)
            try:
                data = path.read_bytes()
            except OSError as exc:
                return f"unreadable ({exc})"
            checksum = hashlib.sha256(data).hexdigest()
            if checksum != local[sha].checksum:
                return f"sha256 {checksum[:12]}…, the local index says {local[sha].checksum[:12]}…"
            bucket.put_bytes(f"{prefix}{ENTRIES_DIR}/{sha}.safetensors", data, "application/octet-stream")
            return None

        todo = [sha for sha in sorted(local) if not in_s3(sha)]
        if f"{prefix}{KEY_FILE}" not in sizes:
            bucket.put_bytes(f"{prefix}{KEY_FILE}", (folder / KEY_FILE).read_bytes(), "application/json")
        with ThreadPoolExecutor(TRANSFERS) as pool:
            problems = dict(zip(todo, pool.map(send, todo)))
        for sha, problem in sorted(problems.items()):
            if problem is not None:
                log.warning("feature cache %s: entry %s %s; not uploaded", folder, sha, problem)
        sent = {sha: local[sha] for sha, problem in problems.items() if problem is None}
        if sent:  # read again just before writing: another fold may have pushed meanwhile
            merged = {**_remote_index(bucket, folder.name), **sent}
            bucket.put_bytes(f"{prefix}{INDEX_FILE}", index_json(record["key"], merged), "application/json")
        uploaded += len(sent)
        log.info(
            "feature cache %s: %d entries uploaded to s3://%s/%s, %d already there",
            folder,
            len(sent),
            bucket.name,
            prefix,
            len(local) - len(todo),
        )
    return uploaded


@contextmanager
def shared_feature_cache(
    config: SERConfig, settings: StackSettings, wanted: Collection[str] | None = None
) -> Iterator[Path | None]:
    """The worker's ``--feature-cache`` for ``config``: None when it uses no feature cache, else
    the machine's folder (:func:`local_feature_cache_dir`), pulled from S3 before the block (entries
    of the ``wanted`` audio sha256s) and pushed after it when the block succeeds. S3 failures are
    logged as warnings: the cache is only an optimisation."""
    if not uses_feature_cache(config):
        yield None
        return
    root = local_feature_cache_dir(settings)
    bucket = DataBucket.from_settings(settings)
    try:
        pulled = pull(config, root, bucket, wanted)
    except (StorageUnavailableError, ClientError) as exc:
        log.warning(
            "feature cache: pull from s3://%s/%s failed (%s); the worker computes what %s lacks",
            bucket.name,
            PREFIX,
            exc,
            root,
        )
        pulled = Pulled()
    yield root
    try:
        push(config, root, bucket, pulled.corrupt)
    except (StorageUnavailableError, ClientError) as exc:
        log.warning(
            "feature cache: push to s3://%s/%s failed (%s); the next fold that needs these entries recomputes them",
            bucket.name,
            PREFIX,
            exc,
        )
