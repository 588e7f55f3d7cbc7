"""S3 storage of manifest versions (the data bucket).

Layout of the data bucket (``SER_DATA_BUCKET``, default ``ser-data``)::

    manifests/<corpus>/<fingerprint>/manifest.parquet
    manifests/<corpus>/<fingerprint>/quarantine.parquet
    manifests/<corpus>/<fingerprint>/folds.parquet
    manifests/<corpus>/<fingerprint>/report.json
    manifests/<corpus>/latest.json    {"fingerprint", "written_at", "root", "report_key"}
    manifests/<corpus>/source.json    last source fingerprint seen by scheduled retraining
    feature-cache/<digest>/...        frozen-backbone feature cache (flows/feature_store.py)

Every manifests/ key is built by :func:`object_key` from validated ids only (feature-cache/ keys
by flows/feature_store.py from checked digests and entry names), so no caller can write outside
this layout. A manifest version is *complete* when its four files exist; ``latest``
moves to a version only after all four were written and read back (:func:`publish_manifest`),
so an S3 outage in the middle of a publication leaves ``latest`` where it was.

Connection failures (endpoint down, timeouts) surface as :class:`StorageUnavailableError`,
the only error worth retrying; everything else (missing version, invalid manifest) has its
own message and is not retried.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any

import pandas as pd
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)

from data_contracts.datasets import register_from_report, resolve_dataset
from data_contracts.ingest import OUTPUT_FILES
from data_contracts.schemas import validate_folds, validate_manifest
from ser_stack.settings import StackSettings

log = logging.getLogger(__name__)

MANIFEST_FILES = {PurePosixPath(name).stem: name for name in OUTPUT_FILES}
"""Kind → file name of an ingest's outputs (``"manifest"`` → ``manifest.parquet``), as ingest writes them."""
CORPUS_FILES = {"latest": "latest.json", "source": "source.json"}
KINDS = (*MANIFEST_FILES, *CORPUS_FILES)

_FINGERPRINT = re.compile(r"[0-9a-f]{64}")
_CONNECTION_ERRORS = (
    EndpointConnectionError,
    ConnectionClosedError,
    ConnectTimeoutError,
    ReadTimeoutError,
)


def _is_missing(exc: ClientError) -> bool:
    """Whether an S3 error says the object does not exist (head_object: 404, get_object: NoSuchKey)."""
    return exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound")


class StorageUnavailableError(ConnectionError):
    """The S3 endpoint could not be reached; retrying later may succeed."""


class ManifestVersionNotFoundError(LookupError):
    """The requested manifest version of a corpus does not exist (or is incomplete)."""


class InvalidKeyPartError(ValueError):
    """A corpus, fingerprint, run id, fold or file name that would leave the bucket layout."""


def check_fingerprint(fingerprint: str) -> str:
    if not isinstance(fingerprint, str) or not _FINGERPRINT.fullmatch(fingerprint):
        raise InvalidKeyPartError(
            f"invalid manifest fingerprint {fingerprint!r}; expected 64 lowercase hex characters"
        )
    return fingerprint


def object_key(
    kind: str,
    corpus: str,
    fingerprint: str | None = None,
) -> str:
    """Key of one object in the data bucket, built only from validated ids.

    kind: one of ``manifest``, ``quarantine``, ``folds``, ``report`` (need ``fingerprint``),
    ``latest``, ``source`` (per corpus).
    """
    resolve_dataset(corpus)
    if kind in MANIFEST_FILES:
        if fingerprint is None:
            raise InvalidKeyPartError(f"object kind {kind!r} needs a fingerprint")
        return f"manifests/{corpus}/{check_fingerprint(fingerprint)}/{MANIFEST_FILES[kind]}"
    if kind in CORPUS_FILES:
        return f"manifests/{corpus}/{CORPUS_FILES[kind]}"
    raise InvalidKeyPartError(f"unknown object kind {kind!r}; expected one of {', '.join(KINDS)}")


@dataclass(frozen=True)
class DataBucket:
    """A boto3 S3 client bound to the data bucket.

    ``from_env`` takes endpoint, bucket and credentials from ``StackSettings.from_env()`` (the
    AWS environment, or the key file ``infra/up`` wrote; boto3's profile chain when neither is
    set), never from flow parameters, so credentials never reach logs or Prefect.
    """

    client: Any
    name: str

    @classmethod
    def from_settings(
        cls, settings: StackSettings, connect_timeout_s: float = 5.0, max_attempts: int = 2
    ) -> DataBucket:
        client = settings.s3_client(connect_timeout_s=connect_timeout_s, max_attempts=max_attempts)
        return cls(client=client, name=settings.data_bucket)

    @classmethod
    def from_env(cls) -> DataBucket:
        return cls.from_settings(StackSettings.from_env())

    @property
    def endpoint(self) -> str:
        return self.client.meta.endpoint_url

    def _call(self, operation: str, key: str, **kwargs: Any) -> Any:
        try:
            return getattr(self.client, operation)(Bucket=self.name, Key=key, **kwargs)
        except _CONNECTION_ERRORS as exc:
            raise StorageUnavailableError(
                f"S3 endpoint {self.endpoint} unreachable during {operation} of s3://{self.name}/{key}: {exc}"
            ) from exc

    def put_bytes(self, key: str, data: bytes, content_type: str) -> None:
        self._call("put_object", key, Body=data, ContentType=content_type)

    def get_bytes(self, key: str) -> bytes:
        return self._call("get_object", key)["Body"].read()

    def exists(self, key: str) -> bool:
        try:
            self._call("head_object", key)
        except ClientError as exc:
            if _is_missing(exc):
                return False
            raise
        return True

    def list_sizes(self, prefix: str) -> dict[str, int]:
        """Every object under ``prefix`` (all pages): key → size in bytes."""
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.name, Prefix=prefix)
            return {obj["Key"]: int(obj["Size"]) for page in pages for obj in page.get("Contents", [])}
        except _CONNECTION_ERRORS as exc:
            raise StorageUnavailableError(
                f"S3 endpoint {self.endpoint} unreachable while listing s3://{self.name}/{prefix}: {exc}"
            ) from exc

    def list_prefixes(self, prefix: str) -> list[str]:
        """Immediate sub-folders (common prefixes) under ``prefix``."""
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.name, Prefix=prefix, Delimiter="/"
            )
            return [p["Prefix"] for page in pages for p in page.get("CommonPrefixes", [])]
        except _CONNECTION_ERRORS as exc:
            raise StorageUnavailableError(
                f"S3 endpoint {self.endpoint} unreachable while listing s3://{self.name}/{prefix}: {exc}"
            ) from exc


def parquet_bytes(df: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    df.to_parquet(buffer, index=False)
    return buffer.getvalue()


def json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, indent=2, sort_keys=True, default=str).encode()


def put_parquet(bucket: DataBucket, key: str, df: pd.DataFrame) -> bytes:
    """Write ``df`` as Parquet; returns the bytes written (for read-back checks)."""
    data = parquet_bytes(df)
    bucket.put_bytes(key, data, "application/vnd.apache.parquet")
    return data


def get_parquet(bucket: DataBucket, key: str) -> pd.DataFrame:
    return pd.read_parquet(io.BytesIO(bucket.get_bytes(key)))


def put_json(bucket: DataBucket, key: str, obj: Any) -> bytes:
    data = json_bytes(obj)
    bucket.put_bytes(key, data, "application/json")
    return data


def get_json(bucket: DataBucket, key: str) -> Any:
    return json.loads(bucket.get_bytes(key))


def _get_json_or_none(bucket: DataBucket, key: str) -> Any | None:
    try:
        return get_json(bucket, key)
    except ClientError as exc:
        if _is_missing(exc):
            return None
        raise


def read_latest(corpus: str, bucket: DataBucket | None = None) -> dict | None:
    """The ``latest`` pointer of ``corpus``, or None when no version was ever published."""
    bucket = bucket or DataBucket.from_env()
    return _get_json_or_none(bucket, object_key("latest", corpus))


def write_latest(corpus: str, pointer: dict, bucket: DataBucket | None = None) -> None:
    """Move ``latest``; the pointer must name a complete version of ``corpus``."""
    bucket = bucket or DataBucket.from_env()
    fingerprint = check_fingerprint(pointer.get("fingerprint"))
    if not manifest_exists(corpus, fingerprint, bucket):
        raise ManifestVersionNotFoundError(
            f"refusing to move latest of {corpus} to {fingerprint}: its files are not all in "
            f"s3://{bucket.name}/manifests/{corpus}/{fingerprint}/"
        )
    put_json(bucket, object_key("latest", corpus), pointer)


def read_source_state(corpus: str, bucket: DataBucket | None = None) -> dict | None:
    """What scheduled retraining last saw of the corpus source, or None."""
    bucket = bucket or DataBucket.from_env()
    return _get_json_or_none(bucket, object_key("source", corpus))


def write_source_state(corpus: str, state: dict, bucket: DataBucket | None = None) -> None:
    bucket = bucket or DataBucket.from_env()
    put_json(bucket, object_key("source", corpus), state)


def manifest_exists(corpus: str, fingerprint: str, bucket: DataBucket | None = None) -> bool:
    """True when all four files of the version exist (a complete publication)."""
    bucket = bucket or DataBucket.from_env()
    return all(bucket.exists(object_key(kind, corpus, fingerprint)) for kind in MANIFEST_FILES)


def list_manifest_versions(corpus: str, bucket: DataBucket | None = None) -> list[str]:
    """Fingerprints of the complete versions of ``corpus``, sorted."""
    bucket = bucket or DataBucket.from_env()
    prefixes = bucket.list_prefixes(f"manifests/{resolve_dataset(corpus).name}/")
    names = [p.rstrip("/").rsplit("/", 1)[-1] for p in prefixes]
    return sorted(n for n in names if _FINGERPRINT.fullmatch(n) and manifest_exists(corpus, n, bucket))


def resolve_version(corpus: str, version: str = "latest", bucket: DataBucket | None = None) -> str:
    """Fingerprint of ``version`` (``latest`` or a fingerprint) of ``corpus``, checked complete."""
    bucket = bucket or DataBucket.from_env()
    if version == "latest":
        pointer = read_latest(corpus, bucket)
        if pointer is None:
            first = (
                f"the ingest-table deployment (--param name={corpus} --param source=TABLE)"
                if resolve_dataset(corpus).is_table
                else f"the ingest-{corpus} deployment"
            )
            raise ManifestVersionNotFoundError(
                f"no manifest of {corpus} in s3://{bucket.name}/manifests/{corpus}/: run {first} first"
            )
        version = pointer["fingerprint"]
    check_fingerprint(version)
    if not manifest_exists(corpus, version, bucket):
        available = list_manifest_versions(corpus, bucket)
        raise ManifestVersionNotFoundError(
            f"manifest version {version} of {corpus} is missing or incomplete in "
            f"s3://{bucket.name}/manifests/{corpus}/; available: {', '.join(available) or 'none'}"
        )
    return version


def load_manifest_version(
    corpus: str, version: str = "latest", bucket: DataBucket | None = None
) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """``(manifest, folds, report)`` of one version, validated through data_contracts.schemas."""
    bucket = bucket or DataBucket.from_env()
    return read_manifest_tables(corpus, resolve_version(corpus, version, bucket), bucket)


def read_manifest_tables(
    corpus: str, fingerprint: str, bucket: DataBucket
) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """``(manifest, folds, report)`` of a fingerprint :func:`resolve_version` returned (checked
    complete), validated through data_contracts.schemas."""
    report = get_json(bucket, object_key("report", corpus, fingerprint))
    register_from_report(report)  # a table dataset's classes come from its report
    manifest = validate_manifest(get_parquet(bucket, object_key("manifest", corpus, fingerprint)))
    folds = validate_folds(get_parquet(bucket, object_key("folds", corpus, fingerprint)))
    log.info("loaded manifest %s of %s: %d utterances", fingerprint, corpus, len(manifest))
    return manifest, folds, report


@dataclass(frozen=True)
class Publication:
    """Outcome of :func:`publish_manifest`: ``status`` is ``unchanged`` or ``published``."""

    status: str
    corpus: str
    fingerprint: str
    previous: str | None
    keys: tuple[str, ...]


def publish_manifest(
    corpus: str,
    fingerprint: str,
    manifest: pd.DataFrame,
    quarantine: pd.DataFrame,
    folds: pd.DataFrame,
    report: dict,
    root: str,
    bucket: DataBucket | None = None,
) -> Publication:
    """Write one manifest version and move ``latest`` to it, or do nothing when it is current
    (except recording ``root`` in ``latest`` when the same manifest now comes from another root,
    since trainings read the audio from the root ``latest`` names).

    Order: the four files under the fingerprint → each read back and compared (sha256 of
    bytes) → only then ``latest``. A failure at any step leaves ``latest`` unchanged, and a
    rerun rewrites the version from the start.
    """
    bucket = bucket or DataBucket.from_env()
    resolve_dataset(corpus)
    check_fingerprint(fingerprint)
    pointer = read_latest(corpus, bucket)
    previous = pointer["fingerprint"] if pointer else None
    keys = tuple(object_key(kind, corpus, fingerprint) for kind in MANIFEST_FILES)
    if previous == fingerprint and manifest_exists(corpus, fingerprint, bucket):
        if pointer.get("root") != root:
            # the same utterances, now at another root: trainings must read them there
            write_latest(corpus, {**pointer, "root": root}, bucket)
            log.info(
                "manifest %s of %s is already latest; its root is now %s (was %s)",
                fingerprint,
                corpus,
                root,
                pointer.get("root"),
            )
        else:
            log.info("manifest %s of %s is already complete and latest: nothing written", fingerprint, corpus)
        return Publication("unchanged", corpus, fingerprint, previous, keys)

    written = {
        keys[0]: put_parquet(bucket, keys[0], manifest),
        keys[1]: put_parquet(bucket, keys[1], quarantine),
        keys[2]: put_parquet(bucket, keys[2], folds),
        keys[3]: put_json(bucket, keys[3], report),
    }
    for key, data in written.items():
        if hashlib.sha256(bucket.get_bytes(key)).digest() != hashlib.sha256(data).digest():
            raise StorageUnavailableError(
                f"read-back of s3://{bucket.name}/{key} differs from what was written; latest of "
                f"{corpus} left at {previous}"
            )
        log.info("wrote and verified s3://%s/%s (%d bytes)", bucket.name, key, len(data))
    write_latest(
        corpus,
        {
            "fingerprint": fingerprint,
            "written_at": datetime.now(UTC).isoformat(),
            "root": root,
            "report_key": keys[3],
        },
        bucket,
    )
    log.info("latest of %s moved from %s to %s", corpus, previous, fingerprint)
    return Publication("published", corpus, fingerprint, previous, keys)
