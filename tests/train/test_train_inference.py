"""Inference from a checkpoint folder (any rate, channels, length) and ONNX export parity."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import onnxruntime
import pytest
import soundfile
import torch
import torchaudio

from ser_model.config import ModelConfig
from ser_model.export import export_onnx
from ser_model.hf_backbone import save_random_hf_backbone
from ser_model.inference import Predictor, sliding_windows
from ser_model.model import SERModel
from tests.train.synthetic import tiny_config


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("checkpoint")
    SERModel(tiny_config(max_seconds=2.0)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def wavlm_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    backbone = save_random_hf_backbone(tmp_path_factory.mktemp("tiny_wavlm"))
    config = dataclasses.replace(
        tiny_config(), model=ModelConfig(backbone=f"hf:{backbone}", flam_heads=2, embed_dim=16)
    )
    folder = tmp_path_factory.mktemp("wavlm_checkpoint")
    SERModel(config).save_pretrained(folder)
    return folder


def _noise(seconds: float, sr: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    mono = 0.3 * np.sin(2 * np.pi * 440 * t * (1 + 0.3 * t)) + 0.05 * rng.standard_normal(len(t))
    if channels == 1:
        return mono.astype(np.float32)
    return np.stack([mono * (c + 1) / channels for c in range(channels)], axis=1).astype(np.float32)


def _softmax_reference(model: SERModel, wave: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        x = torch.from_numpy(wave)[None]
        return torch.softmax(model(x, torch.tensor([len(wave)])).logits, dim=1)[0].numpy()


@pytest.mark.parametrize(
    "n, window, hop", [(10, 10, 5), (11, 4, 2), (100, 30, 30), (3, 8, 4), (1000, 160, 80)]
)
def test_sliding_windows_cover_every_sample_with_full_windows(n, window, hop):
    spans = sliding_windows(n, window, hop)
    covered = np.zeros(n, dtype=bool)
    for start, end in spans:
        covered[start:end] = True
        assert end - start == min(window, n)
    assert covered.all() and spans[0][0] == 0 and spans[-1][1] == n


def test_48k_stereo_file_matches_its_16k_mono_version(checkpoint, tmp_path):
    predictor = Predictor.from_pretrained(checkpoint)
    stereo = _noise(1.5, 48000, channels=2)
    path = tmp_path / "stereo48k.wav"
    soundfile.write(path, stereo, 48000, subtype="FLOAT")
    [from_file] = predictor.predict_files([path])
    mono16k = torchaudio.functional.resample(torch.from_numpy(stereo.mean(axis=1)), 48000, 16000).numpy()
    reference = _softmax_reference(predictor.model, mono16k)
    got = np.array([from_file["probabilities"][label] for label in predictor.labels])
    assert sum(from_file["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(got, reference, atol=1e-4)
    assert from_file["label"] == predictor.labels[int(np.argmax(reference))]


@pytest.mark.parametrize("seconds", [0.0, -1.0])
def test_a_window_that_is_not_positive_is_refused_naming_it(checkpoint, seconds):
    with pytest.raises(ValueError, match="window_seconds"):
        Predictor.from_pretrained(checkpoint, window_seconds=seconds)


def test_long_input_averages_the_softmax_of_overlapping_windows(checkpoint):
    predictor = Predictor.from_pretrained(checkpoint, window_seconds=2.0, overlap=0.5, batch_size=3)
    wave = _noise(7.3, 16000, seed=1)
    [prediction] = predictor.predict_arrays([(wave, 16000)])
    starts = [
        0,
        16000,
        32000,
        48000,
        64000,
        80000,
        len(wave) - 32000,
    ]  # hop 1 s, the last window ends at the end
    reference = np.mean([_softmax_reference(predictor.model, wave[s : s + 32000]) for s in starts], axis=0)
    got = np.array([prediction["probabilities"][label] for label in predictor.labels])
    np.testing.assert_allclose(got, reference, atol=1e-5)
    assert got.sum() == pytest.approx(1.0, abs=1e-6)
    whole = _softmax_reference(predictor.model, wave)
    assert not np.allclose(got, whole, atol=1e-6), "the long input must be windowed, not seen whole"


def test_batch_of_mixed_inputs_equals_one_by_one(checkpoint):
    predictor = Predictor.from_pretrained(checkpoint, batch_size=2)
    items = [
        (_noise(0.7, 22050, seed=2), 22050),
        (_noise(3.1, 16000, 2, seed=3), 16000),
        (_noise(1.2, 44100, seed=4), 44100),
    ]
    together = predictor.predict_arrays(items)
    alone = [predictor.predict_arrays([item])[0] for item in items]
    for a, b in zip(together, alone):
        assert a["label"] == b["label"]
        for label in predictor.labels:
            assert a["probabilities"][label] == pytest.approx(b["probabilities"][label], abs=1e-5)


@pytest.mark.parametrize("backbone", ["fbank", "wavlm"])
def test_onnx_matches_pytorch_at_two_lengths_and_batched(backbone, request, tmp_path):
    checkpoint = request.getfixturevalue("checkpoint" if backbone == "fbank" else "wavlm_checkpoint")
    out = export_onnx(checkpoint, tmp_path / "model.onnx")
    assert json.loads((tmp_path / "model.onnx.labels.json").read_text()) == ["low", "mid", "high"]
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    model = SERModel.from_pretrained(checkpoint)
    waves = [_noise(0.9, 16000, seed=5), _noise(4.2, 16000, seed=6)]
    logits = []
    for wave in waves:
        with torch.no_grad():
            expected = model(torch.from_numpy(wave)[None], torch.tensor([len(wave)])).logits.numpy()
        got, probs = session.run(
            ["logits", "probabilities"],
            {"waves": wave[None], "lengths": np.array([len(wave)], dtype=np.int64)},
        )
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
        logits.append(got)
    assert not np.allclose(logits[0], logits[1], atol=1e-3), "the two inputs must give different outputs"
    padded = np.zeros((2, len(waves[1])), dtype=np.float32)
    padded[0, : len(waves[0])] = waves[0]
    padded[1] = waves[1]
    batched = session.run(
        ["logits"], {"waves": padded, "lengths": np.array([len(w) for w in waves], dtype=np.int64)}
    )[0]
    np.testing.assert_allclose(batched, np.concatenate(logits), atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def calibrated_checkpoint(checkpoint, tmp_path_factory):
    """The tiny checkpoint with a temperature of 2.5 in its folder."""
    import shutil

    from ser_model.calibration import write_calibration

    folder = tmp_path_factory.mktemp("calibrated") / "best"
    shutil.copytree(checkpoint, folder)
    write_calibration(folder, {"temperature": 2.5, "source": "test"})
    return folder


def test_onnx_and_predictor_return_the_calibrated_probabilities(calibrated_checkpoint, tmp_path):
    out = export_onnx(calibrated_checkpoint, tmp_path / "model.onnx")
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    model = SERModel.from_pretrained(calibrated_checkpoint)
    predictor = Predictor.from_pretrained(calibrated_checkpoint)
    wave = _noise(1.7, 16000, seed=7)
    with torch.no_grad():
        z = model(torch.from_numpy(wave)[None], torch.tensor([len(wave)])).logits.double()
    expected = torch.softmax(z / 2.5, dim=1).numpy()  # the reference: softmax(z / T)
    got = session.run(
        ["probabilities"], {"waves": wave[None], "lengths": np.array([len(wave)], dtype=np.int64)}
    )[0]
    np.testing.assert_allclose(got, expected, atol=1e-4)
    from_predictor = predictor.predict_arrays([(wave, 16000)])[0]
    np.testing.assert_allclose(list(from_predictor["probabilities"].values()), expected[0], atol=1e-4)
    assert from_predictor["confidence"] == pytest.approx(expected.max(), abs=1e-4)
    uncalibrated = torch.softmax(z, dim=1).numpy()
    assert np.abs(uncalibrated - expected).max() > 1e-3, "T = 2.5 must move the probabilities"


def test_min_confidence_marks_uncertain_answers_and_keeps_their_probabilities(calibrated_checkpoint):
    predictor = Predictor.from_pretrained(calibrated_checkpoint)
    items = [(_noise(1.0 + 0.3 * k, 16000, seed=k), 16000) for k in range(4)]
    plain = predictor.predict_arrays(items)
    top = max(p["confidence"] for p in plain)
    strict = predictor.predict_arrays(items, min_confidence=min(1.0, top + 1e-6))
    assert all(p["label"] != "uncertain" for p in plain)
    assert all(p["label"] == "uncertain" for p in strict)
    assert [p["probabilities"] for p in strict] == [p["probabilities"] for p in plain]
