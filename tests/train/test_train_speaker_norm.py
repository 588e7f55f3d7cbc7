"""Speaker-level normalisation in training, evaluation and scoring: each split's speakers get
statistics from that split's own utterances, result.json says when the test speakers' own were used,
and scoring a speaker-normalised model needs the speakers (Predictor, `ser predict --speaker`)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from ser_model import training_data
from ser_model.cli import main
from ser_model.errors import MissingSpeakersError
from ser_model.evaluation import evaluate_rows
from ser_model.inference import Predictor
from ser_model.launch import BAD_CONFIG_EXIT, RELEASE_FOLD
from ser_model.model import SERModel
from ser_model.speaker_norm import row_statistics, speaker_statistics
from ser_model.train import fit, training_splits
from tests.train.synthetic import tiny_config

SR = 16000


def _speaker_config(**train):
    config = tiny_config(**train)
    return config.with_overrides({"model.fbank_norm": "speaker"})


class StatisticsLog:
    """Wraps ser_model.training_data.split_statistics: records which utterances gave each split's statistics."""

    def __init__(self, monkeypatch):
        self.calls: dict[str, list[str]] = {}
        real = training_data.split_statistics

        def recording(backbone, read, speakers, name, **kwargs):
            self.calls[name] = list(speakers)
            return real(backbone, read, speakers, name, **kwargs)

        monkeypatch.setattr(training_data, "split_statistics", recording)


def test_fit_normalises_each_split_by_its_own_speakers_and_labels_the_result(
    synthetic_corpus, tmp_path, monkeypatch
):
    root, manifest, folds = synthetic_corpus
    statistics = StatisticsLog(monkeypatch)
    result = fit(_speaker_config(epochs=2), manifest, folds, 1, root, tmp_path, resume=False)

    splits = training_splits(manifest, folds, 1)
    assert statistics.calls == {name: splits[name]["speaker"].tolist() for name in ("train", "valid", "test")}
    assert result.uses_test_speaker_statistics
    saved = json.loads((tmp_path / "result.json").read_text())
    assert saved["uses_test_speaker_statistics"] is True
    assert saved["test"]["n"] == 6

    # the test metrics are those of the selected model scored with the test speakers' own statistics
    best = SERModel.from_pretrained(tmp_path / "best")
    assert best.config.model.fbank_norm == "speaker"
    reference = evaluate_rows(best, splits["test"], root, device="cpu")
    assert saved["test"]["confusion"] == reference["confusion"]


def test_release_fit_has_no_test_speakers_to_normalise(synthetic_corpus, tmp_path, monkeypatch):
    root, manifest, folds = synthetic_corpus
    statistics = StatisticsLog(monkeypatch)
    result = fit(_speaker_config(epochs=1), manifest, folds, RELEASE_FOLD, root, tmp_path, resume=False)
    assert sorted(statistics.calls) == ["train", "valid"]
    assert not result.uses_test_speaker_statistics
    assert json.loads((tmp_path / "result.json").read_text())["uses_test_speaker_statistics"] is False


def test_a_default_fit_uses_no_speaker_statistics(synthetic_corpus, tmp_path, monkeypatch):
    root, manifest, folds = synthetic_corpus
    statistics = StatisticsLog(monkeypatch)
    fit(tiny_config(epochs=1), manifest, folds, 1, root, tmp_path, resume=False)
    assert statistics.calls == {}
    assert json.loads((tmp_path / "result.json").read_text())["uses_test_speaker_statistics"] is False


@pytest.fixture
def speaker_checkpoint(tmp_path):
    torch.manual_seed(0)
    return SERModel(_speaker_config()).eval().save_pretrained(tmp_path / "speaker-model")


@pytest.fixture
def files(tmp_path):
    """Three WAV files of different loudness and lengths."""
    rng = np.random.default_rng(3)
    paths = []
    for i, (gain, n) in enumerate(((0.05, 12000), (0.3, 9000), (0.1, 15000))):
        paths.append(str(tmp_path / f"utt{i}.wav"))
        sf.write(paths[-1], (gain * rng.standard_normal(n)).astype(np.float32), SR)
    return paths


def _reference_probabilities(model: SERModel, waves: list[np.ndarray], speakers: list[str]) -> np.ndarray:
    """softmax of the model on each wave alone, normalised by its speaker's statistics over all the waves."""
    stats = speaker_statistics(model.backbone, waves, speakers)
    out = []
    with torch.no_grad():
        for wave, speaker in zip(waves, speakers):
            x = torch.from_numpy(wave)[None]
            logits = model(x, torch.tensor([len(wave)]), row_statistics(stats, [speaker])).logits
            out.append(torch.softmax(logits, dim=1)[0].double().numpy())
    return np.array(out)


def test_predictor_normalises_each_file_by_its_given_speakers_statistics(speaker_checkpoint, files):
    predictor = Predictor.from_pretrained(speaker_checkpoint)
    speakers = ["A", "B", "A"]
    got = predictor.predict_files(files, speakers)
    waves = [sf.read(p, dtype="float32")[0] for p in files]
    reference = _reference_probabilities(predictor.model, waves, speakers)
    probs = np.array([[g["probabilities"][c] for c in predictor.labels] for g in got])
    np.testing.assert_allclose(probs, reference, rtol=1e-4, atol=1e-6)
    # one speaker for all three: other statistics, other probabilities
    together = predictor.predict_files(files, ["A"] * 3)
    assert not np.allclose([t["probabilities"][c] for t in together for c in predictor.labels], probs.ravel())


def test_a_speaker_model_scored_without_speakers_says_what_is_missing(speaker_checkpoint, files):
    predictor = Predictor.from_pretrained(speaker_checkpoint)
    with pytest.raises(MissingSpeakersError, match=r"needs the speaker of every input.*--speaker NAME"):
        predictor.predict_files(files)
    with pytest.raises(MissingSpeakersError, match="fbank_norm='speaker'"):
        predictor.predict_arrays([(np.zeros(8000, dtype=np.float32), SR)])
    with pytest.raises(ValueError, match="got 2 speakers for 3 inputs"):
        predictor.predict_files(files, ["A", "B"])


def test_a_default_model_predicts_the_same_with_or_without_speakers(tmp_path, files):
    torch.manual_seed(0)
    folder = SERModel(tiny_config()).eval().save_pretrained(tmp_path / "bin-model")
    predictor = Predictor.from_pretrained(folder)
    assert predictor.predict_files(files) == predictor.predict_files(files, ["A", "B", "A"])


def test_ser_predict_speaker_scores_the_files_as_one_speaker(speaker_checkpoint, files, capsys):
    argv = ["predict", *files, "--model", str(speaker_checkpoint), "--json"]
    assert main(argv + ["--speaker", "actor-1"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    reference = Predictor.from_pretrained(speaker_checkpoint).predict_files(files, ["actor-1"] * 3)
    assert [line["file"] for line in lines] == files
    for line, expected in zip(lines, reference):
        assert line["label"] == expected["label"]
        assert line["probabilities"] == pytest.approx(expected["probabilities"], rel=1e-5)

    assert main(argv) == BAD_CONFIG_EXIT
    assert "needs the speaker of every input" in capsys.readouterr().err
    assert main(argv + ["--speaker", "actor-1", "--segments"]) == BAD_CONFIG_EXIT
    assert "--speaker" in capsys.readouterr().err
