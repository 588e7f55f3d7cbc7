"""The S3 health check without the stack: an S3 API that lists buckets (moto's server) is not enough
for the stack's own SeaweedFS, whose master must also list a volume server (a stand-in master
here answers ``/dir/status``); an S3 endpoint elsewhere is judged by listing buckets alone. The
live stack's check is in test_infra_live.py."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from moto.server import ThreadedMotoServer

from ser_infra.seaweedfs import check_s3, seaweed_volume_servers
from ser_stack.settings import StackSettings
from tests.flows.live_stack import free_weed_ports


class Master:
    """Answers GET /dir/status with ``topology`` (what the SeaweedFS master's handler returns)."""

    def __init__(self, port: int):
        self.topology: dict = {"Max": 0, "Free": 0}
        master = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                body = json.dumps({"Topology": master.topology, "Version": "test"}).encode()
                self.send_response(200 if self.path == "/dir/status" else 404)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def s3_and_master(tmp_path):
    s3_port, master_port = free_weed_ports(2)
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=s3_port)
    moto.start()
    master = Master(master_port)
    env = {
        "SER_STATE_DIR": str(tmp_path),
        "SER_S3_PORT": str(s3_port),
        "SER_WEED_MASTER_PORT": str(master_port),
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing-secret-0123456789",
    }
    yield env, master
    master.server.shutdown()
    moto.stop()


def test_the_stacks_s3_is_unhealthy_until_its_master_lists_a_volume_server(s3_and_master):
    env, master = s3_and_master
    settings = StackSettings.from_env(env)
    reason = check_s3(settings)
    assert (
        reason is not None
        and "no volume server registered" in reason
        and env["SER_WEED_MASTER_PORT"] in reason
    )
    node = {"Url": "127.0.0.1:8080", "PublicUrl": "127.0.0.1:8080", "Volumes": 2}
    master.topology = {"DataCenters": [{"Id": "dc", "Racks": [{"Id": "rack", "DataNodes": [node]}]}]}
    assert seaweed_volume_servers(settings) == ["127.0.0.1:8080"]
    assert check_s3(settings) is None
    master.server.shutdown()
    master.server.server_close()
    reason = check_s3(settings)
    assert reason is not None and f"SeaweedFS master at 127.0.0.1:{env['SER_WEED_MASTER_PORT']}" in reason


def test_an_s3_endpoint_elsewhere_is_judged_by_listing_buckets(s3_and_master):
    env, master = s3_and_master
    master.server.shutdown()  # no master at all: not ours to ask
    master.server.server_close()
    elsewhere = {**env, "AWS_ENDPOINT_URL_S3": f"http://localhost:{env['SER_S3_PORT']}/", "SER_S3_PORT": "1"}
    assert check_s3(StackSettings.from_env(elsewhere)) is None
    gone = {**elsewhere, "AWS_ENDPOINT_URL_S3": f"http://localhost:{env['SER_WEED_MASTER_PORT']}"}
    reason = check_s3(StackSettings.from_env(gone))
    assert reason is not None and reason.startswith("S3 list_buckets at")
