"""Issue 21: the three paths to segments (`ser predict --segments` from a checkpoint folder, the
MLflow pyfunc with the `segments` parameter, an exported ONNX graph) give the same segments for the
same RAVDESS recording; the served pyfunc bounds a request's audio with SER_SERVE_MAX_SEGMENTS_SECONDS."""

from __future__ import annotations

import base64
import json

import mlflow
import numpy as np
import pandas as pd
import pytest

from data_contracts.labels import LABELS
from flows.pyfunc import log_pyfunc, probability_column
from flows.serving import ModelInputError
from ser_model.calibration import write_calibration
from ser_model.cli import main
from ser_model.export import export_onnx
from tests.fixtures.corpora import ser_ingest
from tests.fixtures.recordings import fold0_test_files, random_ravdess_checkpoint, write_joined
from tests.fixtures.torch_threads import two_torch_threads  # noqa: F401 - autouse fixture

pytestmark = pytest.mark.slow
COLUMNS = ["start_s", "end_s", "label", "confidence"] + [probability_column(c) for c in LABELS["ravdess"]]


@pytest.fixture
def recording(shared_ravdess, tmp_path):
    """Three fold-0 test utterances: the first two 0.2 s apart (one speech region, longer than a
    window: several windows merged), the third after 1.5 s of silence."""
    path = tmp_path / "joined.flac"
    write_joined(fold0_test_files(shared_ravdess, 3), path, [0.2, 1.5])
    return path


def cli_segments(recording, model, capsys, *flags: str) -> pd.DataFrame:
    assert main(["predict", str(recording), "--segments", "--json", "--model", str(model), *flags]) == 0
    return pd.DataFrame([json.loads(line) for line in capsys.readouterr().out.splitlines()])[COLUMNS]


def test_cli_pyfunc_and_onnx_give_the_same_segments(local_mlflow, experiment_id, recording, tmp_path, capsys):
    checkpoint = random_ravdess_checkpoint(tmp_path / "best")
    write_calibration(checkpoint, {"temperature": 0.5, "source": "test"})  # every path is calibrated
    from_cli = cli_segments(recording, checkpoint, capsys)
    assert len(from_cli) >= 2
    assert (
        from_cli["end_s"].iloc[0] - from_cli["start_s"].iloc[0] > 4.0 or len(from_cli) >= 3
    )  # the joined pair spans windows

    with mlflow.start_run(experiment_id=experiment_id):
        model = mlflow.pyfunc.load_model(log_pyfunc(checkpoint).model_uri)
    encoded = base64.b64encode(recording.read_bytes()).decode("ascii")
    from_pyfunc = model.predict(pd.DataFrame({"audio_base64": [encoded]}), params={"segments": True})
    assert list(from_pyfunc.columns) == ["row"] + COLUMNS
    assert (from_pyfunc["row"] == 0).all()
    from_path = model.predict(pd.DataFrame({"audio": [str(recording)]}), params={"segments": True})

    onnx_path = export_onnx(checkpoint, tmp_path / "ser.onnx")
    from_onnx = cli_segments(recording, onnx_path, capsys)

    for name, other, rtol in (
        ("pyfunc base64", from_pyfunc, 1e-6),
        ("pyfunc path", from_path, 1e-6),
        ("onnx", from_onnx, 1e-3),
    ):
        pd.testing.assert_frame_equal(
            other[COLUMNS[:3]].reset_index(drop=True), from_cli[COLUMNS[:3]], obj=name
        )
        np.testing.assert_allclose(
            other[COLUMNS[3:]].to_numpy(float),
            from_cli[COLUMNS[3:]].to_numpy(float),
            rtol=rtol,
            atol=1e-5,
            err_msg=name,
        )

    whole = model.predict(pd.DataFrame({"audio_base64": [encoded]}))
    assert (
        list(whole.columns) == ["label", "confidence"] + [probability_column(c) for c in LABELS["ravdess"]]
        and len(whole) == 1
    )

    # "uncertain" below min_confidence on every path, never at 0; the probabilities stay
    assert (from_cli["label"] != "uncertain").all()
    above_all = str(min(1.0, from_cli["confidence"].max() + 1e-6))
    strict_cli = cli_segments(recording, checkpoint, capsys, "--min-confidence", above_all)
    strict_onnx = cli_segments(recording, onnx_path, capsys, "--min-confidence", above_all)
    strict_pyfunc = model.predict(
        pd.DataFrame({"audio_base64": [encoded]}),
        params={"segments": True, "min_confidence": float(above_all)},
    )
    for strict in (strict_cli, strict_onnx, strict_pyfunc):
        assert (strict["label"] == "uncertain").all()
        np.testing.assert_allclose(
            strict[COLUMNS[4:]].to_numpy(float), from_cli[COLUMNS[4:]].to_numpy(float), rtol=1e-3, atol=1e-5
        )


def test_served_requests_with_segments_are_bounded_by_the_audio_of_all_rows(
    local_mlflow, experiment_id, tmp_path, monkeypatch
):
    checkpoint = random_ravdess_checkpoint(tmp_path / "best")
    with mlflow.start_run(experiment_id=experiment_id):
        uri = log_pyfunc(checkpoint).model_uri
    monkeypatch.setenv("SER_SERVING", "1")
    monkeypatch.setenv("SER_SERVE_MAX_SECONDS", "5")
    monkeypatch.setenv("SER_SERVE_MAX_SEGMENTS_SECONDS", "12")
    model = mlflow.pyfunc.load_model(uri)
    tone = 0.1 * np.sin(np.arange(8 * 16000) / 16000 * 2 * np.pi * 220)
    tone[:16000] = tone[-16000:] = 0.0  # speech-like: 6 s of tone between 1 s silences
    eight_s = tone.astype(np.float32).tolist()
    one_row = model.predict(
        pd.DataFrame({"audio": [eight_s], "sample_rate": [16000]}), params={"segments": True}
    )
    assert len(one_row) >= 1 and (one_row["row"] == 0).all()
    assert one_row["start_s"].iloc[0] == pytest.approx(0.9, abs=0.03) and one_row["end_s"].iloc[
        -1
    ] == pytest.approx(7.1, abs=0.03)
    with pytest.raises(
        ModelInputError,
        match=r"row 1, field 'audio': 8.0 s of audio, more than the limit of 4 s left of the 12 s "
        r"of audio a request with segments may hold \(SER_SERVE_MAX_SEGMENTS_SECONDS\)",
    ) as refused:
        model.predict(
            pd.DataFrame({"audio": [eight_s, eight_s], "sample_rate": [16000, 16000]}),
            params={"segments": True},
        )
    assert refused.value.status == 413
    with pytest.raises(
        ModelInputError, match=r"row 0, field 'audio': 8.0 s of audio, more than the limit of 5 s per row"
    ):
        model.predict(pd.DataFrame({"audio": [eight_s], "sample_rate": [16000]}))
    with pytest.raises(  # the signature's parameter schema refuses it before the model runs
        mlflow.exceptions.MlflowException,
        match=r"Invalid parameters found: .*'segments'.*boolean.*for value `yes`",
    ):
        model.predict(pd.DataFrame({"audio": [eight_s], "sample_rate": [16000]}), params={"segments": "yes"})


def test_ser_evaluate_segments_scores_joined_recordings_and_logs_the_run_to_mlflow(
    local_mlflow, shared_ravdess, tmp_path, capsys
):
    """Issue 21 item 5: one held-out actor's 60 utterances, joined 8 to a recording with 1.5 s of
    silence, scored in segments and one by one; the evaluation is an MLflow run with its figures."""
    import shutil

    from flows.cli import main as ser

    root = tmp_path / "held-out"
    shutil.copytree(shared_ravdess / "Actor_01", root / "Actor_01")
    checkpoint = random_ravdess_checkpoint(tmp_path / "best")
    assert ser_ingest(root, tmp_path / "out") == 0
    capsys.readouterr()
    argv = [
        "evaluate",
        "--model",
        str(checkpoint),
        "--manifest",
        str(tmp_path / "out"),
        "--split",
        "all",
        "--segments",
        "--json",
        str(tmp_path / "eval.json"),
        "--mlflow-experiment",
        "ser-segments-eval",
    ]
    assert ser(argv) == 0
    out = capsys.readouterr().out
    assert "8 recordings of 8 utterances, 1.5 s gaps of silence" in out and "logged to " in out
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["utterances"] == 60 and result["recordings"] == 8
    assert result["boundary_error_s"]["median"] <= 0.3
    assert result["middles_in_one_segment"] == 1.0
    assert result["segment_config"]["window_s"] == 4.0
    segment = result["segment"]  # reference UA: each class's recall over its seconds of true speech
    support = [sum(row) + missed for row, missed in zip(segment["confusion_s"], segment["missed_s"])]
    assert sum(support) == pytest.approx(segment["speech_s"])
    recalls = [row[c] / s for c, (row, s) in enumerate(zip(segment["confusion_s"], support)) if s > 0]
    assert len(recalls) >= 2 and segment["UA"] == pytest.approx(sum(recalls) / len(recalls))
    (run,) = local_mlflow.search_runs(
        [local_mlflow.get_experiment_by_name("ser-segments-eval").experiment_id]
    )
    assert run.data.metrics["segment.UA"] == pytest.approx(result["segment"]["UA"])
    assert run.data.metrics["boundary_error_s.median"] == pytest.approx(result["boundary_error_s"]["median"])
    assert run.data.params["segments.gap"] == "silence" and run.data.params["split"] == "all"
    assert run.info.status == "FINISHED"
