"""Fixtures for flow tests against the live stack: a private data bucket, the Prefect API,
free ports for a second SeaweedFS. tests/conftest.py registers this module as a plugin, so every test can name them."""

from __future__ import annotations

import socket
import uuid

import pytest
from prefect.settings import PREFECT_API_URL, temporary_settings

from flows.storage import DataBucket


def empty_bucket(bucket: DataBucket) -> None:
    """Delete every object of ``bucket`` (all pages), then the bucket itself."""
    pages = bucket.client.get_paginator("list_objects_v2").paginate(Bucket=bucket.name)
    for page in pages:
        for obj in page.get("Contents", []):
            bucket.client.delete_object(Bucket=bucket.name, Key=obj["Key"])
    bucket.client.delete_bucket(Bucket=bucket.name)


@pytest.fixture
def live_bucket(stack, monkeypatch) -> DataBucket:
    """A data bucket of its own on the live S3, named in SER_DATA_BUCKET for code under test
    (so tests never touch ``ser-data`` and never fire the deployments' manifest triggers),
    with the stack's client environment set; deleted with its objects afterwards."""
    for key, value in stack.client_env().items():
        monkeypatch.setenv(key, value)
    name = f"ser-test-{uuid.uuid4().hex[:12]}"
    monkeypatch.setenv("SER_DATA_BUCKET", name)
    bucket = DataBucket(client=DataBucket.from_settings(stack).client, name=name)
    bucket.client.create_bucket(Bucket=name)
    yield bucket
    empty_bucket(bucket)


@pytest.fixture
def prefect_api(stack):
    """Run flows called in this process against the live Prefect server."""
    with temporary_settings(updates={PREFECT_API_URL: stack.prefect_api_url}):
        yield stack.prefect_api_url


def free_weed_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` free ports p with p + 10000 also free (SeaweedFS puts its gRPC port there)."""
    ports: list[int] = []
    for candidate in range(20000 + uuid.uuid4().int % 5000, 55000, 7):
        pair_free = all(_free(host, p) for p in (candidate, candidate + 10000))
        if pair_free and not any(abs(candidate - p) < 2 for p in ports):
            ports.append(candidate)
        if len(ports) == count:
            return ports
    raise RuntimeError("no free port pairs for a second SeaweedFS")


def _free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex((host, port)) != 0
