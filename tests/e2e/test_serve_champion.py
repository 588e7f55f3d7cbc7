"""Issue 15 "Done when", on the live stack: the registered champion is served by
`mlflow models serve -m models:/<name>@champion --env-manager local` on loopback; a real RAVDESS
file posted as a waveform and as base64 FLAC bytes gets the probabilities `ser predict` prints
for that file; a path (`/etc/passwd`, the stack's S3 credentials file), oversize requests, NaN
samples, a rate of the wrong type and empty audio each get a 4xx naming what is wrong, and no
reply of the server holds a stack trace, a server path or the S3 secret.

The champion is a small fbank model with random weights (its probabilities, not its accuracy,
are compared), registered under a name of its own so that the stack's `ser-ravdess` champion is
left alone; the registered model is deleted afterwards.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from data_contracts.labels import LABELS
from flows.pyfunc import probability_column
from flows.serving import running_model_server
from ser_stack.settings import CREDENTIALS_FILE
from tests.fixtures.network import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LIMITS = {
    "SER_SERVE_MAX_ROWS": "4",
    "SER_SERVE_MAX_SECONDS": "10",
    "SER_SERVE_MAX_REQUEST_BYTES": str(4 * 2**20),
}


def post(url: str, body: bytes, content_type: str = "application/json") -> tuple[int, str]:
    request = urllib.request.Request(f"{url}/invocations", data=body, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=120) as reply:
            return reply.status, reply.read().decode("utf-8")
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode("utf-8")


def records(*rows: dict) -> bytes:
    return json.dumps({"dataframe_records": list(rows)}).encode("utf-8")


def test_the_served_champion_answers_like_ser_predict_and_refuses_bad_requests_cleanly(
    stack, champion, shared_ravdess, repo_root, tmp_path
):
    env = {**os.environ, **stack.client_env(), **LIMITS, "PYTHONPATH": str(repo_root)}
    file = shared_ravdess / "Actor_01" / "03-01-05-01-01-01-01.flac"
    printed = subprocess.run(
        [str(Path(sys.executable).parent / "ser"), "predict", str(file), "--json", "--model", champion],
        env=env,
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert printed.returncode == 0, printed.stderr[-3000:]
    expected = json.loads(printed.stdout.strip().splitlines()[-1])
    wave, rate = sf.read(file, dtype="float32")
    credentials = stack.state_dir / CREDENTIALS_FILE

    with running_model_server(champion, free_port(), env, tmp_path / "serve.log") as (url, _):
        answers = {
            "waveform": post(url, records({"audio": wave.tolist(), "sample_rate": rate})),
            "base64": post(
                url, records({"audio_base64": base64.b64encode(file.read_bytes()).decode("ascii")})
            ),
        }
        refusals = {
            "etc passwd": post(url, records({"audio": "/etc/passwd"})),
            "credentials": post(url, records({"audio": str(credentials)})),
            "rows": post(url, records(*[{"audio": [0.0] * 160, "sample_rate": 16000}] * 5)),
            "seconds": post(url, records({"audio": [0.0] * (16000 * 11), "sample_rate": 16000})),
            "bytes": post(url, records({"audio_base64": "A" * (5 * 2**20)})),
            "nan": post(url, b'{"dataframe_records": [{"audio": [0.1, NaN, 0.2], "sample_rate": 16000}]}'),
            "rate type": post(url, records({"audio": [0.1, 0.2], "sample_rate": "16k"})),
            "empty": post(url, records({"audio": [], "sample_rate": 16000})),
            "not json": post(url, b'{"dataframe_records": ['),
        }

    for form, (status, body) in answers.items():
        assert status == 200, (form, body)
        (prediction,) = json.loads(body)["predictions"]
        assert prediction["label"] == expected["label"], form
        got = [prediction[probability_column(c)] for c in LABELS["ravdess"]]
        np.testing.assert_allclose(
            got, [expected["probabilities"][c] for c in LABELS["ravdess"]], rtol=1e-5, atol=1e-6, err_msg=form
        )

    expected_refusals = {
        "etc passwd": (400, "row 0, field 'audio': file paths are not accepted by the served model"),
        "credentials": (400, "row 0, field 'audio': file paths are not accepted by the served model"),
        "rows": (413, "5 rows, more than the limit of 4 rows per request (SER_SERVE_MAX_ROWS)"),
        "seconds": (
            413,
            "row 0, field 'audio': 11.0 s of audio, more than the limit of 10 s per row (SER_SERVE_MAX_SECONDS)",
        ),
        "bytes": (413, f"more than the limit of {4 * 2**20} bytes (SER_SERVE_MAX_REQUEST_BYTES)"),
        "nan": (400, "row 0, field 'audio': 1 samples are NaN or infinite"),
        "rate type": (400, "row 0, field 'sample_rate': got '16k', expected an integer number of Hz"),
        "empty": (400, "row 0, field 'audio': the waveform holds no samples"),
        "not json": (400, "Ensure that input is a valid JSON formatted string"),
    }
    assert {case: status for case, (status, _) in refusals.items()} == {
        case: status for case, (status, _) in expected_refusals.items()
    }
    secret = stack.secret_access_key
    for case, (_, body) in refusals.items():
        reply = json.loads(body)
        assert set(reply) == {"error_code", "message"}, (case, body)
        assert expected_refusals[case][1] in reply["message"], (case, body)
        for leak in ("Traceback", 'File "', "site-packages", str(repo_root), str(stack.state_dir), secret):
            assert leak not in body, (case, leak, body)
