"""Corpus sources: a local folder or an ``s3://bucket/prefix``, seen as relative POSIX paths.

A source lists the files under its root, reads their bytes and stats them. Every path stays
inside the root: ``..`` components and absolute paths are refused (``path_escape``), a symlink
that resolves outside the root is refused (``symlink_escape``), and a file name that is not
valid UTF-8 is reported (``non_utf8_name``) instead of crashing the listing. Refused entries come
back in the listing so that ingest turns them into quarantine rows: nothing is dropped silently.

S3 endpoints and credentials come from the standard AWS configuration (``AWS_ENDPOINT_URL_S3`` or
``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` or a profile), read by boto3.
"""

from __future__ import annotations

import os
import stat
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

from data_contracts.errors import SourceError

_S3_CLIENT_LOCK = threading.Lock()
"""Serialises the creation of S3 clients: ingest reads files from a pool of threads, and boto3's
default session, which `boto3.client` uses, is not thread-safe."""


@dataclass(frozen=True)
class SourceFile:
    """One file of a corpus source: its relative POSIX path, size in bytes and version tag
    (``mtime_ns`` of a local file, ETag of an S3 object), the cheap facts fingerprints use."""

    path: str
    size: int
    version: str


@dataclass(frozen=True)
class RefusedFile:
    """An entry under the root that cannot be read safely; `path` is printable (bad bytes escaped)."""

    path: str
    reason_code: str
    reason: str


@dataclass(frozen=True)
class Listing:
    """Files under a root, sorted by path, and the entries refused while listing it."""

    files: tuple[SourceFile, ...]
    refused: tuple[RefusedFile, ...]


def check_relative_path(path: str) -> str:
    """Return `path` if it is a relative POSIX path with no ``.``/``..``/empty components.

    Raises SourceError("path_escape") otherwise: such a path could name a file outside the root.
    """
    parts = path.split("/")
    if not path or path.startswith("/") or "\\" in path or any(p in ("", ".", "..") for p in parts):
        raise SourceError(
            "path_escape",
            f"{path!r}: expected a relative POSIX path inside the corpus root "
            "(no leading '/', no empty, '.' or '..' components, no backslashes)",
        )
    return path


def printable_path(path: str) -> str:
    """`path` with bytes that are not UTF-8 (surrogate escapes from the OS) shown as ``\\xNN``."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _inside(root_real: str, real: str) -> bool:
    return real == root_real or real.startswith(root_real.rstrip(os.sep) + os.sep)


def resolve_inside(root_real: str, path: str) -> str:
    """The real path of the relative POSIX `path` under the real (symlink-free) `root_real`.

    Raises SourceError("path_escape") for a path that names its way out (see
    `check_relative_path`) and SourceError("symlink_escape") when a symlink on the way leads
    outside the root.
    """
    check_relative_path(path)
    real = os.path.realpath(os.path.join(root_real, *path.split("/")))
    if not _inside(root_real, real):
        raise SourceError(
            "symlink_escape", f"{path}: resolves to {real}, outside the corpus root {root_real}"
        )
    return real


class CorpusSource(ABC):
    """A corpus root: list its files, read one file's bytes, stat one file."""

    root: str

    @abstractmethod
    def list_files(self) -> Listing:
        """Every file under the root (recursive), sorted by path, plus refused entries."""

    @abstractmethod
    def read_bytes(self, path: str) -> bytes:
        """The bytes of the file at relative `path`; SourceError if unsafe or unreadable."""

    @abstractmethod
    def stat(self, path: str) -> SourceFile:
        """Size and version of the file at relative `path`; SourceError if unsafe or missing."""


class LocalSource(CorpusSource):
    """A corpus in a local folder. Symlinks are followed only while they stay inside the root;
    a symlinked folder appears under its own path too, and a link back to an ancestor is refused."""

    def __init__(self, root: str | Path):
        self.root = str(root)
        self._root_real = os.path.realpath(root)
        if not os.path.isdir(self._root_real):
            raise SourceError("missing_root", f"corpus root {self.root!r} is not a directory")
        self._listed: dict[str, str] = {}  # relative path -> real path, of the latest listing

    def _resolve(self, path: str) -> str:
        """The real path of ``path``: as the latest listing found it (checked inside the root
        there), else resolved and checked now (`resolve_inside`)."""
        listed = self._listed.get(path)
        return listed if listed is not None else resolve_inside(self._root_real, path)

    def list_files(self) -> Listing:
        files: list[SourceFile] = []
        refused: list[RefusedFile] = []
        listed: dict[str, str] = {}
        pending = [(self._root_real, "", frozenset({self._root_real}))]
        while pending:
            directory, prefix, ancestors = pending.pop()
            try:
                entries = list(os.scandir(directory))
            except OSError as err:
                refused.append(
                    RefusedFile(printable_path(prefix or "."), "read_error", f"cannot list directory: {err}")
                )
                continue
            for entry in entries:
                rel = f"{prefix}{entry.name}"
                shown = printable_path(rel)
                if not _is_utf8(entry.name):
                    refused.append(
                        RefusedFile(
                            shown, "non_utf8_name", f"{shown}: file name is not valid UTF-8; rename it"
                        )
                    )
                    continue
                # `directory` is a real path, so an entry that is no symlink is its own real path:
                # only links need resolving (a realpath per file was a third of a local listing)
                link = entry.is_symlink()
                real = os.path.realpath(entry.path) if link else entry.path
                if link and not _inside(self._root_real, real):
                    refused.append(
                        RefusedFile(
                            shown, "symlink_escape", f"{shown}: symlink to {real}, outside the corpus root"
                        )
                    )
                    continue
                try:
                    info = os.stat(real)
                except OSError as err:
                    refused.append(RefusedFile(shown, "read_error", f"{shown}: cannot stat: {err}"))
                    continue
                if stat.S_ISDIR(info.st_mode):
                    if real in ancestors:
                        refused.append(
                            RefusedFile(
                                shown, "symlink_loop", f"{shown}: symlink back to its own parent {real}"
                            )
                        )
                    else:
                        pending.append((real, f"{rel}/", ancestors | {real}))
                elif stat.S_ISREG(info.st_mode):
                    files.append(SourceFile(rel, info.st_size, str(info.st_mtime_ns)))
                    listed[rel] = real
                else:
                    refused.append(RefusedFile(shown, "not_regular_file", f"{shown}: not a regular file"))
        self._listed = listed
        return Listing(
            tuple(sorted(files, key=lambda f: f.path)), tuple(sorted(refused, key=lambda r: r.path))
        )

    def read_bytes(self, path: str) -> bytes:
        real = self._resolve(path)
        try:  # O_NOFOLLOW: a file replaced by a symlink since it was resolved is refused, not followed
            fd = os.open(real, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
            with os.fdopen(fd, "rb") as handle:
                return handle.read()
        except OSError as err:
            raise SourceError("read_error", f"{path}: cannot read: {err}") from err

    def stat(self, path: str) -> SourceFile:
        real = self._resolve(path)
        try:
            info = os.stat(real)
        except OSError as err:
            raise SourceError("read_error", f"{path}: cannot stat: {err}") from err
        return SourceFile(path, info.st_size, str(info.st_mtime_ns))


class S3Source(CorpusSource):
    """A corpus under ``s3://bucket/prefix``; keys are listed relative to the prefix."""

    def __init__(self, url: str):
        if not url.startswith("s3://"):
            raise SourceError("missing_root", f"{url!r}: expected an s3://bucket/prefix URL")
        bucket, _, prefix = url[len("s3://") :].partition("/")
        if not bucket:
            raise SourceError("missing_root", f"{url!r}: no bucket name; expected s3://bucket/prefix")
        self.root = url
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._client = None

    def __getstate__(self):
        return {**self.__dict__, "_client": None}

    @property
    def client(self):
        with _S3_CLIENT_LOCK:
            if self._client is None:
                from ser_stack.s3 import s3_client

                self._client = s3_client()
        return self._client

    def _key(self, path: str) -> str:
        check_relative_path(path)
        return f"{self.prefix}/{path}" if self.prefix else path

    def _errors(self):
        from botocore.exceptions import BotoCoreError, ClientError

        return (BotoCoreError, ClientError)

    def list_files(self) -> Listing:
        files: list[SourceFile] = []
        refused: list[RefusedFile] = []
        start = f"{self.prefix}/" if self.prefix else ""
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=start)
            for page in pages:
                for obj in page.get("Contents", []):
                    rel = obj["Key"][len(start) :]
                    if rel.endswith("/"):
                        continue
                    try:
                        check_relative_path(rel)
                    except SourceError as err:
                        refused.append(RefusedFile(rel, err.reason_code, str(err)))
                        continue
                    files.append(SourceFile(rel, int(obj["Size"]), obj.get("ETag", "").strip('"')))
        except self._errors() as err:
            raise SourceError("read_error", f"cannot list {self.root}: {err}") from err
        return Listing(
            tuple(sorted(files, key=lambda f: f.path)), tuple(sorted(refused, key=lambda r: r.path))
        )

    def read_bytes(self, path: str) -> bytes:
        key = self._key(path)
        try:
            return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except self._errors() as err:
            raise SourceError("read_error", f"{self.root}/{path}: cannot read: {err}") from err

    def stat(self, path: str) -> SourceFile:
        key = self._key(path)
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key)
        except self._errors() as err:
            raise SourceError("read_error", f"{self.root}/{path}: cannot stat: {err}") from err
        return SourceFile(path, int(head["ContentLength"]), head.get("ETag", "").strip('"'))


def open_source(root: str | Path | CorpusSource) -> CorpusSource:
    """A CorpusSource for `root`: itself if already one, S3 for ``s3://`` URLs, else a local folder."""
    if isinstance(root, CorpusSource):
        return root
    if str(root).startswith("s3://"):
        return S3Source(str(root))
    return LocalSource(root)
