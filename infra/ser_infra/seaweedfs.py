"""Component `s3`: SeaweedFS `weed mini` (master, volume server, filer and S3 gateway in one
process) with access-key auth: its credentials, identity file, command line, health check and buckets.

Start: `ensure_credentials`, `write_s3_config`, then the process (`s3_component`); once healthy,
`create_buckets`. Check: `check_s3`. Stop: its process group (state.stop_recorded).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import urllib.request

from ser_infra.component import BIN, HTTP_TIMEOUT_S, Component
from ser_infra.state import create_private_json, write_private
from ser_stack.settings import CREDENTIALS_FILE, StackSettings

log = logging.getLogger("ser.infra")

S3_CONFIG_FILE = "seaweedfs-s3.json"
"""The SeaweedFS S3 identity file in the state folder (`seaweed_s3_config`)."""
DATA_FOLDER = "seaweedfs"
"""SeaweedFS's data in the state folder."""


def ensure_credentials(settings: StackSettings) -> StackSettings:
    """Return settings with S3 credentials: from the environment, else generated once into the state folder (0600)."""
    if settings.access_key_id and settings.secret_access_key:
        return settings
    path = settings.state_dir / CREDENTIALS_FILE
    stored = {
        "access_key_id": "SER" + secrets.token_hex(8).upper(),
        "secret_access_key": secrets.token_urlsafe(30),
    }
    create_private_json(path, stored)
    log.info("generated S3 credentials in %s", path)
    return StackSettings.from_env({**os.environ, **settings.client_env()})


def seaweed_s3_config(settings: StackSettings) -> str:
    """SeaweedFS S3 identity file: one identity with full rights for the stack's access key."""
    identity = {
        "name": "ser",
        "credentials": [{"accessKey": settings.access_key_id, "secretKey": settings.secret_access_key}],
        "actions": ["Admin", "Read", "List", "Tagging", "Write"],
    }
    return json.dumps({"identities": [identity]}, indent=2)


def write_s3_config(settings: StackSettings) -> None:
    """The identity file (0600) and the data folder that `weed mini` reads at start."""
    write_private(settings.state_dir / S3_CONFIG_FILE, seaweed_s3_config(settings))
    (settings.state_dir / DATA_FOLDER).mkdir(parents=True, exist_ok=True)


def s3_component(settings: StackSettings) -> Component:
    state = settings.state_dir
    argv = [
        str(BIN / "weed"),
        "mini",
        f"-dir={state / DATA_FOLDER}",
        f"-ip={settings.host}",
        f"-ip.bind={settings.host}",
        f"-master.port={settings.weed_master_port}",
        f"-volume.port={settings.weed_volume_port}",
        f"-filer.port={settings.weed_filer_port}",
        f"-s3.port={settings.s3_port}",
        f"-admin.port={settings.weed_admin_port}",
        f"-s3.config={state / S3_CONFIG_FILE}",
        "-master.telemetry=false",
        "-admin.ui=false",
        "-webdav=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
    ]
    return Component("s3", settings.s3_port, argv, check_s3, settings.s3_endpoint)


def s3_client(settings: StackSettings):
    """The stack's S3 client with short timeouts and no retries: health checks must answer fast."""
    return settings.s3_client(connect_timeout_s=HTTP_TIMEOUT_S, read_timeout_s=10, max_attempts=1)


def seaweed_volume_servers(settings: StackSettings) -> list[str]:
    """The volume servers the SeaweedFS master has in its topology (``GET /dir/status``)."""
    url = f"http://{settings.host}:{settings.weed_master_port}/dir/status"
    with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as response:
        topology = json.load(response).get("Topology") or {}
    return [
        node.get("Url", "?")
        for center in topology.get("DataCenters") or []
        for rack in center.get("Racks") or []
        for node in rack.get("DataNodes") or []
    ]


def check_s3(settings: StackSettings) -> str | None:
    """None when the S3 API lists buckets with the stack's credentials and, for the stack's own
    SeaweedFS, its master has a volume server, else the reason. The gateway answers
    ``list_buckets`` from the filer's metadata before the volume server has sent its first
    heartbeat; until it has, every object read or write fails with ``InternalError`` (seen under
    load right after a restart). An S3 endpoint elsewhere (``AWS_ENDPOINT_URL_S3``) is judged by
    ``list_buckets`` alone."""
    try:
        s3_client(settings).list_buckets()
    except Exception as exc:  # noqa: BLE001 - any failure is "unhealthy", reported with its reason
        return f"S3 list_buckets at {settings.s3_endpoint}: {exc}"
    if not settings.own_s3:
        return None  # not the stack's SeaweedFS: no master of ours to ask
    try:
        servers = seaweed_volume_servers(settings)
    except (OSError, ValueError) as exc:
        return f"SeaweedFS master at {settings.host}:{settings.weed_master_port}: {exc}"
    if not servers:
        return f"SeaweedFS master at {settings.host}:{settings.weed_master_port} has no volume server registered yet"
    return None


def create_buckets(settings: StackSettings) -> None:
    client = s3_client(settings)
    existing = {bucket["Name"] for bucket in client.list_buckets().get("Buckets", [])}
    for bucket in (settings.data_bucket, settings.mlflow_bucket):
        if bucket not in existing:
            client.create_bucket(Bucket=bucket)
            log.info("created bucket s3://%s", bucket)
