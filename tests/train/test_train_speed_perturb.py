"""Speed perturbation (TrainConfig.speed_factors): the resampling, the draw, the training items."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch
import torchaudio

from ser_model.audio import speed_perturb
from ser_model.config import SERConfig
from ser_model.config_validation import ConfigError
from ser_model.data import UtteranceDataset, random_crop_start, speed_factor
from ser_model.train import fit, training_splits
from tests.train.synthetic import LABELS, tiny_config

SR = 16000


def tone(frequency: float, seconds: float = 1.0) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * frequency * np.arange(int(seconds * SR)) / SR)).astype(np.float32)


def peak_frequency(wave: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.fft.rfftfreq(len(wave), 1 / SR)[np.argmax(spectrum)])


@pytest.mark.parametrize("factor", [0.9, 1.1, 1.25])
def test_a_factor_plays_the_wave_that_much_faster(factor):
    wave = tone(440.0)
    out = speed_perturb(wave, factor, SR)
    reference = torchaudio.functional.resample(torch.from_numpy(wave), round(SR * factor), SR).numpy()
    np.testing.assert_allclose(out, reference, rtol=0, atol=1e-6)
    assert abs(len(out) - len(wave) / factor) <= 1, "shorter by the factor (tempo)"
    assert peak_frequency(out) == pytest.approx(440.0 * factor, abs=2.0), "higher by the factor (pitch)"


def test_factor_one_is_the_wave_itself():
    wave = tone(300.0)
    assert speed_perturb(wave, 1.0, SR) is wave


def test_the_draw_is_uniform_deterministic_and_apart_from_the_crop():
    factors = (0.9, 1.0, 1.1)
    draws = [speed_factor(factors, 0, 3, i) for i in range(3000)]
    assert draws == [speed_factor(factors, 0, 3, i) for i in range(3000)], "a resumed run draws the same"
    counts = Counter(draws)
    assert set(counts) == set(factors) and all(900 < counts[f] < 1100 for f in factors)
    assert draws != [speed_factor(factors, 0, 4, i) for i in range(3000)], "a new draw every epoch"
    assert speed_factor((), 0, 3, 7) == 1.0
    crops = [random_crop_start(10_000, 1_000, 0, 3, i) for i in range(3000)]
    assert crops == [random_crop_start(10_000, 1_000, 0, 3, i) for i in range(3000)]
    assert abs(np.corrcoef(crops, draws)[0, 1]) < 0.1, "the crop's and the factor's streams are separate"


def test_training_items_are_perturbed_then_cropped_and_evaluation_never(synthetic_corpus):
    root, manifest, folds = synthetic_corpus
    rows = training_splits(manifest, folds, 0)["train"]
    args = dict(sample_rate=SR, crop_seconds=None, random_crop=True, seed=0)
    plain = UtteranceDataset(rows, root, LABELS, **args)
    perturbed = UtteranceDataset(rows, root, LABELS, speed_factors=(0.9, 1.1), **args)
    perturbed.set_epoch(2)
    for index in range(len(rows)):
        factor = speed_factor((0.9, 1.1), 0, 2, index)
        expected = speed_perturb(plain.full_wave(index), factor, SR)
        wave, label, item = perturbed[index]
        np.testing.assert_array_equal(wave.numpy(), expected)
        assert (label, item) == (plain[index][1], index)
    same = UtteranceDataset(rows, root, LABELS, speed_factors=(1.0,), **args)
    assert all(torch.equal(same[i][0], plain[i][0]) for i in range(len(rows)))
    with pytest.raises(ValueError, match="training items only"):
        UtteranceDataset(
            rows, root, LABELS, sample_rate=SR, crop_seconds=None, random_crop=False, speed_factors=(0.9,)
        )


def test_the_setting_is_validated_and_round_trips(tmp_path):
    config = tiny_config(speed_factors=[0.9, 1, 1.1])
    assert config.train.speed_factors == (0.9, 1.0, 1.1)
    config.to_json(tmp_path / "c.json")
    assert SERConfig.from_json(tmp_path / "c.json") == config
    assert json.loads((tmp_path / "c.json").read_text())["train"]["speed_factors"] == [0.9, 1.0, 1.1]
    for bad in ([0.3], [1.05, 1.111], [2.5]):
        with pytest.raises(ConfigError, match=r"TrainConfig\.speed_factors: .*multiples of 0\.01"):
            tiny_config(speed_factors=bad)


def test_fit_trains_on_perturbed_items_and_resumes_exactly(synthetic_corpus, tmp_path):
    root, manifest, folds = synthetic_corpus
    config = tiny_config(epochs=2, speed_factors=(0.9, 1.1))
    whole = fit(config, manifest, folds, 0, root, tmp_path / "whole", resume=False)
    plain = fit(tiny_config(epochs=2), manifest, folds, 0, root, tmp_path / "plain", resume=False)
    assert whole.history[0]["train"]["loss"] != plain.history[0]["train"]["loss"]

    class StopAfterOne:
        def on_epoch_end(self, epoch, record):
            if epoch == 1:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(config, manifest, folds, 0, root, tmp_path / "resumed", callbacks=[StopAfterOne()], resume=False)
    resumed = fit(config, manifest, folds, 0, root, tmp_path / "resumed", resume=True)
    assert [r["train"] for r in resumed.history] == [r["train"] for r in whole.history]
