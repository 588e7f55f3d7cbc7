"""The pyfunc's input forms and its serving policy (flows/serving.py), without a server process:
local use keeps paths; in a serving process paths, oversize input and bad values are refused
naming the row, field or limit; MLflow's real scoring app, built in-process the way
`mlflow models serve` builds it, answers errors with no stack trace. The served e2e test is
tests/e2e/test_serve_champion.py."""

from __future__ import annotations

import base64
import io

import mlflow
import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from mlflow.pyfunc import scoring_server
from starlette.testclient import TestClient

from flows.pyfunc import log_pyfunc, probability_column
from flows.serving import SERVING_FLAG, ModelInputError, ServingPolicy
from ser_model.audio import AudioDecodeError, AudioTooLongError, decode_audio_bytes
from ser_model.config import LossConfig, ModelConfig, SERConfig
from ser_model.model import SERModel

LABELS = ("neutral", "happy", "sad")
COLUMNS = [probability_column(c) for c in LABELS]
SERVING_ENV = (SERVING_FLAG, scoring_server._SERVER_MODEL_PATH, "_MLFLOW_IS_IN_SERVING_ENVIRONMENT")


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> str:
    """A tiny random fbank checkpoint logged as the pyfunc (private SQLite store), as the local
    model folder `mlflow models serve` downloads."""
    folder = tmp_path_factory.mktemp("serving-model")
    torch.manual_seed(0)
    model = ModelConfig(
        backbone="fbank", n_mels=40, fbank_dim=32, fbank_layers=1, fbank_heads=2, embed_dim=16
    )
    checkpoint = (
        SERModel(SERConfig(labels=LABELS, model=model, loss=LossConfig(supcon_proj_dim=16)))
        .eval()
        .save_pretrained(folder / "best")
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{folder / 'mlflow.db'}")
        experiment = mlflow.create_experiment("serving", artifact_location=(folder / "artifacts").as_uri())
        with mlflow.start_run(experiment_id=experiment):
            uri = log_pyfunc(checkpoint).model_uri
        return mlflow.artifacts.download_artifacts(uri, dst_path=str(folder / "model"))


@pytest.fixture
def local_model(model_path, monkeypatch):
    """The pyfunc as local batch use loads it: no serving signal in the environment."""
    for name in SERVING_ENV:
        monkeypatch.delenv(name, raising=False)
    return mlflow.pyfunc.load_model(model_path)


@pytest.fixture
def served_model(model_path, monkeypatch):
    """The pyfunc in a serving process (SER_SERVING=1), default limits unless a test sets others."""
    monkeypatch.setenv(SERVING_FLAG, "1")
    return mlflow.pyfunc.load_model(model_path)


def flac_bytes(wave: np.ndarray, rate: int = 16000) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, wave, rate, format="FLAC")
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def noise(seconds: float, rate: int = 16000, seed: int = 0) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(int(seconds * rate))).astype(np.float32)


def refusal(model, frame: pd.DataFrame) -> ModelInputError:
    with pytest.raises(ModelInputError) as caught:
        model.predict(frame)
    return caught.value


def test_decoded_bytes_equal_soundfile_and_long_or_unstated_lengths_are_refused_from_the_header():
    stereo = np.random.default_rng(0).uniform(-0.5, 0.5, (40000, 2)).astype(np.float32)
    data = flac_bytes(stereo)
    samples, rate = decode_audio_bytes(data)
    np.testing.assert_array_equal(samples, sf.read(io.BytesIO(data), dtype="float32", always_2d=True)[0])
    assert rate == 16000
    with pytest.raises(AudioTooLongError, match="2.5 s of audio, more than the limit of 2 s"):
        decode_audio_bytes(data, max_seconds=2.0)
    assert decode_audio_bytes(data, max_seconds=2.5)[0].shape == (40000, 2)
    unstated = bytearray(
        data
    )  # FLAC STREAMINFO: total samples = 0 (unknown) in the low 36 bits of bytes 18..25
    unstated[18:26] = (int.from_bytes(unstated[18:26], "big") & ~((1 << 36) - 1)).to_bytes(8, "big")
    with pytest.raises(AudioDecodeError, match="does not state its length"):
        decode_audio_bytes(bytes(unstated))
    with pytest.raises(AudioDecodeError, match=r"cannot decode the bytes as audio \(Format not recognised"):
        decode_audio_bytes(b"RIFF but not really a wave file")


def test_local_use_reads_paths_anywhere_and_base64_bytes_equal_the_file(local_model, tmp_path):
    wave = noise(1.5)
    path = tmp_path / "utt.flac"
    path.write_bytes(flac_bytes(wave))
    frame = pd.DataFrame(
        {
            "audio": [str(path), None, wave.tolist()],
            "audio_base64": [None, b64(path.read_bytes()), None],
            "sample_rate": [None, None, 16000],
        }
    )
    probs = local_model.predict(frame)[COLUMNS].to_numpy()
    np.testing.assert_allclose(probs[1], probs[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(probs[2], probs[0], rtol=1e-4, atol=1e-5)  # FLAC holds 16-bit samples
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    many = local_model.predict(
        pd.DataFrame({"audio": [noise(0.2).tolist()] * 40, "sample_rate": [16000] * 40})
    )
    assert len(many) == 40  # no rows limit outside a server


@pytest.mark.parametrize("path", ["/etc/passwd", "relative/utt.wav", "../../.ser-state/s3-credentials.json"])
def test_a_served_model_refuses_every_path_by_default(served_model, path):
    error = refusal(served_model, pd.DataFrame({"audio": [path]}))
    assert error.status == 400
    assert error.reply == (
        "row 0, field 'audio': file paths are not accepted by the served model; send the waveform with "
        "'sample_rate', or the file's bytes base64-encoded in 'audio_base64'"
    )


def test_an_allowed_root_lets_its_files_be_read_and_nothing_outside(model_path, monkeypatch, tmp_path):
    root, outside = tmp_path / "audio", tmp_path / "private"
    root.mkdir()
    outside.mkdir()
    wave = noise(1.0, seed=3)
    (root / "utt.flac").write_bytes(flac_bytes(wave))
    (outside / "secret.flac").write_bytes(flac_bytes(wave))
    (root / "link.flac").symlink_to(outside / "secret.flac")
    monkeypatch.setenv(SERVING_FLAG, "1")
    monkeypatch.setenv("SER_SERVE_ALLOWED_ROOT", str(root))
    model = mlflow.pyfunc.load_model(model_path)
    inside = model.predict(pd.DataFrame({"audio": ["utt.flac", str(root / "utt.flac")]}))[COLUMNS].to_numpy()
    from_bytes = model.predict(pd.DataFrame({"audio_base64": [b64(flac_bytes(wave))]}))[COLUMNS].to_numpy()
    np.testing.assert_allclose(inside, np.repeat(from_bytes, 2, axis=0), rtol=1e-5, atol=1e-6)
    for path in ("link.flac", "../private/secret.flac", str(outside / "secret.flac"), "missing.flac", "."):
        error = refusal(model, pd.DataFrame({"audio": [path]}))
        assert error.reply == "row 0, field 'audio': no such file in the folder this server reads from"
        assert str(tmp_path) not in error.reply


def test_limits_refuse_oversize_requests_with_413_naming_the_limit(model_path, monkeypatch):
    monkeypatch.setenv(SERVING_FLAG, "1")
    monkeypatch.setenv("SER_SERVE_MAX_ROWS", "3")
    monkeypatch.setenv("SER_SERVE_MAX_SECONDS", "2")
    model = mlflow.pyfunc.load_model(model_path)
    short = noise(0.5).tolist()
    assert len(model.predict(pd.DataFrame({"audio": [short] * 3, "sample_rate": [16000] * 3}))) == 3
    cases = {
        "SER model input: 4 rows, more than the limit of 3 rows per request (SER_SERVE_MAX_ROWS)": pd.DataFrame(
            {"audio": [short] * 4, "sample_rate": [16000] * 4}
        ),
        "row 1, field 'audio': 2.5 s of audio, more than the limit of 2 s per row (SER_SERVE_MAX_SECONDS)": pd.DataFrame(
            {"audio": [short, noise(2.5).tolist()], "sample_rate": [16000, 16000]}
        ),
        "row 0, field 'audio_base64': 3.0 s of audio, more than the limit of 2 s per row (SER_SERVE_MAX_SECONDS)": pd.DataFrame(
            {"audio_base64": [b64(flac_bytes(np.zeros(24000, np.float32), 8000))]}
        ),
    }
    for message, frame in cases.items():
        error = refusal(model, frame)
        assert (error.status, error.reply) == (413, message)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (
            {"audio": [], "sample_rate": 16000},
            "row 0, field 'audio': the waveform holds no samples; expected at least one",
        ),
        (
            {"audio": [0.1, float("nan"), float("inf")], "sample_rate": 16000},
            "row 0, field 'audio': 2 samples are NaN or infinite; expected finite numbers",
        ),
        (
            {"audio": [0.1, "x"], "sample_rate": 16000},
            "row 0, field 'audio': expected a waveform (a list of numbers), got a list holding other values",
        ),
        ({"audio": [0.1, 0.2]}, "row 0: a waveform in 'audio' needs its rate in 'sample_rate' (Hz, integer)"),
        (
            {"audio": [0.1, 0.2], "sample_rate": "16k"},
            "row 0, field 'sample_rate': got '16k', expected an integer number of Hz",
        ),
        (
            {"audio": [0.1, 0.2], "sample_rate": 16000.5},
            "row 0, field 'sample_rate': got 16000.5, expected an integer number of Hz",
        ),
        (
            {"audio": [0.1, 0.2], "sample_rate": True},
            "row 0, field 'sample_rate': got True, expected an integer number of Hz",
        ),
        (
            {"audio": [0.1, 0.2], "sample_rate": 10},
            "row 0, field 'sample_rate': 10 Hz is outside [1000, 768000] Hz",
        ),
        (
            {"audio": [0.1, 0.2], "sample_rate": 10**30},
            f"row 0, field 'sample_rate': {10**30} Hz is outside [1000, 768000] Hz",
        ),
        (
            {"audio": [0.1, 0.2], "sample_rate": float("inf")},
            "row 0, field 'sample_rate': got inf, expected an integer number of Hz",
        ),
        (
            {"audio": [0.1, 10**400], "sample_rate": 16000},
            "row 0, field 'audio': expected a waveform (a list of numbers), got a list holding other values",
        ),
        (
            {"audio": [[0.1, 0.2], [0.3]], "sample_rate": 16000},
            "row 0, field 'audio': expected a waveform (a list of numbers), got a list holding other values",
        ),
        (
            {"audio": [[[0.1]]], "sample_rate": 16000},
            "row 0, field 'audio': got an array of shape (1, 1, 1), expected (samples,) or (samples, channels)",
        ),
        (
            {"audio": {"left": [0.1]}, "sample_rate": 16000},
            "row 0, field 'audio': got dict, expected a waveform (a list of numbers) or a file path",
        ),
        ({"audio_base64": "not base64!"}, "row 0, field 'audio_base64': not valid base64"),
        (
            {"audio_base64": b64(b"hello")},
            "row 0, field 'audio_base64': cannot decode the bytes as audio (Format not recognised.); expected the content of a WAV, FLAC or OGG file",
        ),
        (
            {"audio_base64": "AAAA", "sample_rate": 16000},
            "row 0, field 'sample_rate': not used with 'audio_base64' (the file's header gives the rate); leave it out",
        ),
        (
            {"audio": [0.1], "audio_base64": "AAAA", "sample_rate": 16000},
            "row 0: expected exactly one of 'audio' (a waveform with 'sample_rate', or a file path) and 'audio_base64' (a WAV/FLAC file's bytes), got both",
        ),
    ],
)
def test_bad_values_are_refused_with_400_naming_row_and_field(served_model, row, message):
    records = [
        row,
        {"audio": noise(0.2).tolist(), "sample_rate": 16000},
    ]  # a frame as the server builds it from dataframe_records
    error = refusal(served_model, pd.DataFrame(records))
    assert (error.status, error.reply) == (400, message)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SER_SERVE_MAX_ROWS": "many"}, "SER_SERVE_MAX_ROWS='many': expected a positive int"),
        ({"SER_SERVE_MAX_SECONDS": "-1"}, "SER_SERVE_MAX_SECONDS='-1': expected a positive float"),
        (
            {"SER_SERVE_MAX_REQUEST_BYTES": "1.5"},
            "SER_SERVE_MAX_REQUEST_BYTES='1.5': expected a positive int",
        ),
        (
            {"SER_SERVE_ALLOWED_ROOT": "/no/such/folder"},
            "SER_SERVE_ALLOWED_ROOT='/no/such/folder': not a folder",
        ),
    ],
)
def test_a_bad_limit_setting_is_refused_naming_the_variable(env, message):
    with pytest.raises(ValueError, match=message):
        ServingPolicy.from_env(env)
    assert ServingPolicy.from_env({}) == ServingPolicy()


def test_mlflows_scoring_app_answers_errors_without_stack_traces_or_input_echoes(
    model_path, monkeypatch, tmp_path
):
    """The app `mlflow models serve` runs (mlflow.pyfunc.scoring_server.app), built in-process:
    the model is loaded with the scoring server's environment variable set, which installs the
    guard, then `scoring_server.init` builds the FastAPI app."""
    monkeypatch.setattr(
        scoring_server, "invocations", scoring_server.invocations
    )  # the guard is undone afterwards
    monkeypatch.setenv(scoring_server._SERVER_MODEL_PATH, model_path)
    monkeypatch.setenv("_MLFLOW_IS_IN_SERVING_ENVIRONMENT", "false")  # init() sets it; restored afterwards
    monkeypatch.setenv("SER_SERVE_MAX_REQUEST_BYTES", "200000")
    client = TestClient(scoring_server.init(scoring_server.load_model_with_mlflow_config(model_path)))
    wave = noise(0.5)
    ok = client.post(
        "/invocations", json={"dataframe_records": [{"audio": wave.tolist(), "sample_rate": 16000}]}
    )
    assert ok.status_code == 200 and set(ok.json()["predictions"][0]) == {"label", "confidence", *COLUMNS}
    replies = {
        "path": client.post("/invocations", json={"dataframe_records": [{"audio": "/etc/passwd"}]}),
        "bytes": client.post(
            "/invocations", json={"dataframe_records": [{"audio": noise(1.0).tolist(), "sample_rate": 16000}]}
        ),
        "csv": client.post("/invocations", content=b"audio\n1", headers={"Content-Type": "text/csv"}),
        "no content type": client.post("/invocations", content=b"{}"),
        "not json": client.post(
            "/invocations", content=b"{" + b"x" * 5000, headers={"Content-Type": "application/json"}
        ),
    }
    assert {name: reply.status_code for name, reply in replies.items()} == {
        "path": 400,
        "bytes": 413,
        "csv": 400,
        "no content type": 415,
        "not json": 400,
    }
    assert "file paths are not accepted" in replies["path"].json()["message"]
    assert (
        replies["bytes"]
        .json()["message"]
        .endswith("more than the limit of 200000 bytes (SER_SERVE_MAX_REQUEST_BYTES)")
    )
    for name, reply in replies.items():
        body = reply.json()
        assert set(body) == {"error_code", "message"}, name
        assert (
            "Traceback" not in reply.text
            and "site-packages" not in reply.text
            and model_path not in reply.text
        ), name
        assert len(body["message"]) < 1100, name


def test_hostile_path_strings_under_an_allowed_root_are_refused_like_missing_files(
    model_path, monkeypatch, tmp_path
):
    monkeypatch.setenv(SERVING_FLAG, "1")
    monkeypatch.setenv("SER_SERVE_ALLOWED_ROOT", str(tmp_path))
    model = mlflow.pyfunc.load_model(model_path)
    for path in ("a\x00b.wav", "x" * 5000, "/" * 3):
        assert (
            refusal(model, pd.DataFrame({"audio": [path]})).reply
            == "row 0, field 'audio': no such file in the folder this server reads from"
        )
