"""Issue 21 "Done when", on the live stack: the served champion answers a request with the
`segments` option for a 2-minute recording (RAVDESS fold-0 test utterances joined with 1.5 s of
silence, sent as base64 FLAC) with the segments `ser predict FILE --segments --json` prints for the
same file and model; a request over SER_SERVE_MAX_SEGMENTS_SECONDS gets 413 naming it.

The champion is the small random fbank model of tests/e2e/test_serve_champion.py, registered under
a name of its own and deleted afterwards."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from data_contracts.labels import LABELS
from flows.pyfunc import probability_column
from flows.serving import running_model_server
from tests.e2e.test_serve_champion import post
from tests.fixtures.network import free_port
from tests.fixtures.recordings import fold0_test_files, write_joined

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LIMITS = {
    "SER_SERVE_MAX_ROWS": "4",
    "SER_SERVE_MAX_SECONDS": "10",
    "SER_SERVE_MAX_SEGMENTS_SECONDS": "180",
    "SER_SERVE_MAX_REQUEST_BYTES": str(12 * 2**20),
}


def segments_request(path: Path, rows: int = 1) -> bytes:
    row = {"audio_base64": base64.b64encode(path.read_bytes()).decode("ascii")}
    return json.dumps({"dataframe_records": [row] * rows, "params": {"segments": True}}).encode("utf-8")


def test_the_served_champion_segments_a_two_minute_file_like_ser_predict(
    stack, champion, shared_ravdess, repo_root, tmp_path
):
    recording = tmp_path / "two-minutes.flac"
    spans = write_joined(fold0_test_files(shared_ravdess, 26), recording, 1.5)
    assert 120.0 <= spans[-1][1] <= 150.0, spans[-1]
    env = {**os.environ, **stack.client_env(), **LIMITS, "PYTHONPATH": str(repo_root)}
    printed = subprocess.run(
        [
            str(Path(sys.executable).parent / "ser"),
            "predict",
            str(recording),
            "--segments",
            "--json",
            "--model",
            champion,
        ],
        env=env,
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert printed.returncode == 0, printed.stderr[-3000:]
    expected = [json.loads(line) for line in printed.stdout.splitlines()]
    assert len(expected) >= 20

    with running_model_server(champion, free_port(), env, tmp_path / "serve.log") as (url, _):
        status, body = post(url, segments_request(recording))
        too_long, refusal = post(url, segments_request(recording, rows=2))

    assert status == 200, body
    answered = json.loads(body)["predictions"]
    assert [(a["row"], a["start_s"], a["end_s"], a["label"]) for a in answered] == [
        (0, e["start_s"], e["end_s"], e["label"]) for e in expected
    ]
    columns = [probability_column(c) for c in LABELS["ravdess"]]
    np.testing.assert_allclose(
        [[a[c] for c in columns] for a in answered],
        [[e[c] for c in columns] for e in expected],
        rtol=1e-5,
        atol=1e-6,
    )
    assert sf.info(recording).duration >= 120.0
    assert too_long == 413, refusal
    assert (
        "a request with segments may hold (SER_SERVE_MAX_SEGMENTS_SECONDS)" in json.loads(refusal)["message"]
    )
