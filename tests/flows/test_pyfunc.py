"""The registered model's pyfunc: log → load with mlflow.pyfunc.load_model → predict."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import mlflow
import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from flows.cli import download_checkpoint
from flows.pyfunc import log_pyfunc, probability_column
from flows.serving import ModelInputError
from ser_model.config import LossConfig, ModelConfig, SERConfig
from ser_model.inference import Predictor
from ser_model.model import SERModel
from ser_stack.names import registered_model_name
from tests.flows.conftest import CHECKPOINT_LABELS

LABELS = CHECKPOINT_LABELS  # the shared `checkpoint` fixture's (tests/flows/conftest.py)


def test_logged_pyfunc_predicts_like_the_predictor_from_paths_and_waveforms(
    local_mlflow, experiment_id, checkpoint, tmp_path
):
    rng = np.random.default_rng(0)
    waves = [(0.1 * rng.standard_normal(16000 + 4000 * i)).astype(np.float32) for i in range(2)]
    stereo_48k = (0.1 * rng.standard_normal((48000, 2))).astype(np.float32)
    paths = []
    for i, wave in enumerate(waves):
        paths.append(str(tmp_path / f"utt{i}.wav"))
        sf.write(paths[-1], wave, 16000)
    paths.append(str(tmp_path / "stereo48k.wav"))
    sf.write(paths[-1], stereo_48k, 48000)

    with mlflow.start_run(experiment_id=experiment_id):
        info = log_pyfunc(checkpoint, registered_model_name=registered_model_name("ravdess"))
    assert str(info.registered_model_version) == "1"
    assert info.signature.inputs.input_names() == ["audio", "sample_rate", "audio_base64", "speaker"]
    model = mlflow.pyfunc.load_model("models:/ser-ravdess/1")
    downloaded = download_checkpoint("models:/ser-ravdess/1", tmp_path / "download")
    assert sorted(p.name for p in downloaded.iterdir()) == sorted(p.name for p in checkpoint.iterdir())

    reference = Predictor.from_pretrained(checkpoint).predict_files(paths)
    from_paths = model.predict(pd.DataFrame({"audio": paths}))
    assert list(from_paths.columns) == ["label", "confidence"] + [probability_column(c) for c in LABELS]
    assert list(from_paths["label"]) == [r["label"] for r in reference]
    probs = from_paths[[probability_column(c) for c in LABELS]].to_numpy()
    np.testing.assert_allclose(
        probs, [[r["probabilities"][c] for c in LABELS] for r in reference], rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(from_paths["confidence"], probs.max(axis=1), atol=1e-9)
    strict = model.predict(pd.DataFrame({"audio": paths}), params={"min_confidence": 1.0})
    assert (strict["label"] == "uncertain").all() and (strict["confidence"] == from_paths["confidence"]).all()
    with pytest.raises(ModelInputError, match="min_confidence"):
        model.predict(pd.DataFrame({"audio": paths}), params={"min_confidence": 1.5})

    from_arrays = model.predict(
        pd.DataFrame({"audio": [w.tolist() for w in waves], "sample_rate": [16000, 16000]})
    )
    np.testing.assert_allclose(
        from_arrays[[probability_column(c) for c in LABELS]].to_numpy(), probs[:2], rtol=1e-4, atol=1e-5
    )


def test_waveforms_without_a_sample_rate_are_refused_with_the_fix(local_mlflow, experiment_id, checkpoint):
    with mlflow.start_run(experiment_id=experiment_id):
        info = log_pyfunc(checkpoint)
    model = mlflow.pyfunc.load_model(info.model_uri)
    with pytest.raises(
        ModelInputError, match=r"row 0: a waveform in 'audio' needs its rate in 'sample_rate' \(Hz, integer\)"
    ):
        model.predict(pd.DataFrame({"audio": [np.zeros(8000).tolist()]}))


def test_ser_predict_with_a_registry_uri_prints_what_the_local_folder_gives(
    local_mlflow, experiment_id, checkpoint, tmp_path, capsys
):
    from flows.cli import main

    wav = tmp_path / "utt.wav"
    sf.write(wav, (0.1 * np.random.default_rng(1).standard_normal(20000)).astype(np.float32), 16000)
    with mlflow.start_run(experiment_id=experiment_id):
        version = log_pyfunc(
            checkpoint, registered_model_name=registered_model_name("ravdess")
        ).registered_model_version
    local_mlflow.set_registered_model_alias("ser-ravdess", "champion", str(version))
    assert main(["predict", str(wav), "--json", "--model", str(checkpoint)]) in (0, None)
    from_folder = json.loads(capsys.readouterr().out)
    assert main(["predict", str(wav), "--json", "--model=models:/ser-ravdess@champion"]) in (0, None)
    from_registry = json.loads(capsys.readouterr().out)
    assert from_registry["label"] == from_folder["label"] in LABELS
    assert from_registry["probabilities"] == pytest.approx(from_folder["probabilities"])
    assert main(["predict", str(wav), "--model", "models:/ser-ravdess@no-such-alias"]) == 2
    assert "models:/ser-ravdess@no-such-alias" in capsys.readouterr().err


def test_one_loaded_model_serves_concurrent_requests_like_serial_ones(
    local_mlflow, experiment_id, checkpoint
):
    """Issue 6 "concurrent prediction load": 8 threads × 4 requests on one loaded pyfunc give
    exactly the serial answers."""
    rng = np.random.default_rng(2)
    frames = [
        pd.DataFrame(
            {"audio": [(0.1 * rng.standard_normal(8000 + 3000 * i)).tolist()], "sample_rate": [16000]}
        )
        for i in range(8)
    ]
    with mlflow.start_run(experiment_id=experiment_id):
        model = mlflow.pyfunc.load_model(log_pyfunc(checkpoint).model_uri)
    torch.set_num_threads(2)
    serial = [model.predict(f) for f in frames]
    with ThreadPoolExecutor(max_workers=8) as pool:
        concurrent = list(pool.map(lambda i: model.predict(frames[i % 8]), range(32)))
    for i, got in enumerate(concurrent):
        pd.testing.assert_frame_equal(got, serial[i % 8], check_exact=False, rtol=1e-5, atol=1e-6)


def test_a_speaker_normalised_model_scores_rows_by_their_speaker_column_and_refuses_without_it(
    local_mlflow, experiment_id, tmp_path
):
    torch.manual_seed(0)
    model_config = ModelConfig(
        backbone="fbank",
        n_mels=40,
        fbank_dim=32,
        fbank_layers=1,
        fbank_heads=2,
        embed_dim=16,
        fbank_norm="speaker",
    )
    config = SERConfig(
        labels=LABELS, model=model_config, loss=LossConfig(supcon_proj_dim=16), corpus="ravdess"
    )
    checkpoint = SERModel(config).eval().save_pretrained(tmp_path / "speaker-model")
    rng = np.random.default_rng(1)
    waves = [(gain * rng.standard_normal(12000)).astype(np.float32) for gain in (0.05, 0.3, 0.1)]
    speakers = ["A", "B", "A"]
    with mlflow.start_run(experiment_id=experiment_id):
        info = log_pyfunc(checkpoint)
    logged = mlflow.models.Model.load(info.model_uri)
    assert "speaker" in logged.load_input_example().columns  # the logged example is one the model accepts
    model = mlflow.pyfunc.load_model(info.model_uri)
    frame = pd.DataFrame({"audio": [w.tolist() for w in waves], "sample_rate": [16000] * 3})

    got = model.predict(frame.assign(speaker=speakers))
    reference = Predictor.from_pretrained(checkpoint).predict_arrays([(w, 16000) for w in waves], speakers)
    np.testing.assert_allclose(
        got[[probability_column(c) for c in LABELS]].to_numpy(),
        [[r["probabilities"][c] for c in LABELS] for r in reference],
        rtol=1e-4,
        atol=1e-6,
    )
    with pytest.raises(ModelInputError, match="needs a 'speaker' column naming the speaker of every row"):
        model.predict(frame)
    with pytest.raises(ModelInputError, match="row 1, field 'speaker'"):
        model.predict(frame.assign(speaker=["A", "", "A"]))
    with pytest.raises(ModelInputError, match="segments are not scored that way"):
        model.predict(frame.assign(speaker=speakers), params={"segments": True})


def test_an_ensemble_release_is_logged_served_and_downloaded_whole(
    local_mlflow, experiment_id, checkpoint, tmp_path
):
    from ser_model.ensemble import SEREnsemble

    torch.manual_seed(1)
    first = SERModel.from_pretrained(checkpoint)
    second = SERModel(first.config).eval()
    folder = SEREnsemble([first, second]).save_pretrained(tmp_path / "ensemble")
    rng = np.random.default_rng(1)
    waves = [(0.1 * rng.standard_normal(16000 + 8000 * i)).astype(np.float32) for i in range(2)]
    with mlflow.start_run(experiment_id=experiment_id):
        info = log_pyfunc(folder, registered_model_name=registered_model_name("ravdess"))
    model = mlflow.pyfunc.load_model(info.model_uri)
    got = model.predict(pd.DataFrame({"audio": [w.tolist() for w in waves], "sample_rate": [16000, 16000]}))
    reference = np.mean([Predictor(m).probabilities(waves) for m in (first, second)], axis=0)
    np.testing.assert_allclose(
        got[[probability_column(c) for c in LABELS]].to_numpy(), reference, rtol=1e-4, atol=1e-5
    )
    downloaded = download_checkpoint(
        f"models:/ser-ravdess/{info.registered_model_version}", tmp_path / "download"
    )
    assert sorted(
        p.relative_to(downloaded).as_posix() for p in downloaded.rglob("*") if p.is_file()
    ) == sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
