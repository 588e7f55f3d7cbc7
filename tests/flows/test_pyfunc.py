"""The registered model's pyfunc: log → load with mlflow.pyfunc.load_model → predict."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from flows.cli import download_checkpoint
from flows.pyfunc import log_pyfunc, probability_column
from ser_model.config import LossConfig, ModelConfig, SERConfig
from ser_model.inference import Predictor
from ser_model.model import SERModel

LABELS = ("neutral", "happy", "sad")


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    model = ModelConfig(backbone="fbank", n_mels=40, fbank_dim=32, fbank_layers=1, fbank_heads=2, embed_dim=16)
    config = SERConfig(labels=LABELS, model=model, loss=LossConfig(supcon_proj_dim=16), corpus="ravdess")
    return SERModel(config).eval().save_pretrained(tmp_path / "best")


def test_logged_pyfunc_predicts_like_the_predictor_from_paths_and_waveforms(local_mlflow, experiment_id, checkpoint, tmp_path):
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
        info = log_pyfunc(checkpoint, registered_model_name="ser-ravdess")
    assert str(info.registered_model_version) == "1"
    assert info.signature.inputs.input_names() == ["audio", "sample_rate"]
    model = mlflow.pyfunc.load_model("models:/ser-ravdess/1")
    downloaded = download_checkpoint("models:/ser-ravdess/1", tmp_path / "download")
    assert sorted(p.name for p in downloaded.iterdir()) == sorted(p.name for p in checkpoint.iterdir())

    reference = Predictor.from_pretrained(checkpoint).predict_files(paths)
    from_paths = model.predict(pd.DataFrame({"audio": paths}))
    assert list(from_paths.columns) == ["label"] + [probability_column(c) for c in LABELS]
    assert list(from_paths["label"]) == [r["label"] for r in reference]
    probs = from_paths[[probability_column(c) for c in LABELS]].to_numpy()
    np.testing.assert_allclose(probs, [[r["probabilities"][c] for c in LABELS] for r in reference], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)

    from_arrays = model.predict(pd.DataFrame({"audio": [w.tolist() for w in waves], "sample_rate": [16000, 16000]}))
    np.testing.assert_allclose(from_arrays[[probability_column(c) for c in LABELS]].to_numpy(), probs[:2], rtol=1e-4, atol=1e-5)


def test_waveforms_without_a_sample_rate_are_refused_with_the_fix(local_mlflow, experiment_id, checkpoint):
    with mlflow.start_run(experiment_id=experiment_id):
        info = log_pyfunc(checkpoint)
    model = mlflow.pyfunc.load_model(info.model_uri)
    with pytest.raises(Exception, match="sample_rate"):
        model.predict(pd.DataFrame({"audio": [np.zeros(8000).tolist()]}))
