"""Speaker-level log-mel normalisation (ModelConfig.fbank_norm="speaker", ser_model.speaker_norm):
the statistics and the normalisation against numpy references, per-item statistics in a batch,
the refusals, and the default mode's outputs unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ser_model.config import LossConfig, ModelConfig, SERConfig
from ser_model.config_validation import ConfigError
from ser_model.export import export_onnx
from ser_model.fbank_backbone import FbankBackbone, LogMelStatistics
from ser_model.model import SERModel
from ser_model.speaker_norm import row_statistics, speaker_statistics

torch.set_num_threads(1)

LABELS = ("neutral", "happy", "angry", "sad")
SR = 16000
DEFAULT_OUTPUTS = Path(__file__).parent / "data" / "default_norm_outputs.json"


def _model_config(**overrides) -> ModelConfig:
    values = dict(
        backbone="fbank",
        n_mels=40,
        fbank_channels=(4, 8, 8, 8),
        fbank_dim=32,
        fbank_layers=1,
        fbank_heads=2,
        embed_dim=16,
    )
    return ModelConfig(**(values | overrides))


def _speaker_model(seed: int = 0) -> SERModel:
    torch.manual_seed(seed)
    config = SERConfig(
        labels=LABELS, model=_model_config(fbank_norm="speaker"), loss=LossConfig(supcon_proj_dim=16)
    )
    return SERModel(config).eval()


def _utterances(seed: int = 0) -> tuple[list[np.ndarray], list[str]]:
    """Five utterances of two speakers of different loudness and colour, of different lengths."""
    rng = np.random.default_rng(seed)
    waves, speakers = [], []
    for n, speaker in zip((16000, 7000, 401, 12000, 9000), ("A", "B", "A", "B", "A")):
        noise = rng.standard_normal(n)
        if speaker == "B":  # a darker, louder voice: low-passed noise
            noise = 3.0 * np.convolve(noise, np.ones(8) / 8, mode="same")
        waves.append((0.1 * noise).astype(np.float32))
        speakers.append(speaker)
    return waves, speakers


def _reference_log_mel(backbone: FbankBackbone, wave: np.ndarray) -> np.ndarray:
    """x = log(mel + 1e-6) of one utterance alone (T, n_mels), float64."""
    mel = backbone.melspec(torch.from_numpy(wave)[None])[0]  # (n_mels, T)
    return torch.log(mel + 1e-6).T.double().numpy()


def _padded(waves: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(w) for w in waves])
    batch = torch.zeros(len(waves), int(lengths.max()))
    for row, w in enumerate(waves):
        batch[row, : len(w)] = torch.from_numpy(w)
    return batch, lengths


def test_speaker_statistics_are_the_mean_and_std_over_all_frames_of_the_speakers_utterances():
    backbone = _speaker_model().backbone
    waves, speakers = _utterances()
    stats = speaker_statistics(backbone, waves, speakers, batch_size=2)  # batches cut across speakers
    assert sorted(stats) == ["A", "B"]
    for speaker in ("A", "B"):
        frames = np.concatenate(
            [_reference_log_mel(backbone, w) for w, s in zip(waves, speakers) if s == speaker]
        )  # (Σ T_u, n_mels)
        mean = frames.mean(axis=0)
        std = np.sqrt(frames.var(axis=0) + 1e-5)
        assert stats[speaker].mean.shape == stats[speaker].std.shape == (40,)
        np.testing.assert_allclose(stats[speaker].mean.numpy(), mean, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(stats[speaker].std.numpy(), std, rtol=1e-5, atol=1e-5)
    # the speakers differ, so one speaker's statistics are not the other's
    assert float((stats["A"].mean - stats["B"].mean).abs().max()) > 0.5


def test_speaker_statistics_read_utterances_from_a_function_as_from_a_list():
    backbone = _speaker_model().backbone
    waves, speakers = _utterances()
    from_list = speaker_statistics(backbone, waves, speakers)
    from_reader = speaker_statistics(backbone, lambda i: waves[i], speakers, batch_size=1)
    for speaker in from_list:
        torch.testing.assert_close(from_reader[speaker].mean, from_list[speaker].mean, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(from_reader[speaker].std, from_list[speaker].std, rtol=1e-5, atol=1e-5)


def test_normalised_log_mel_is_x_minus_speaker_mean_over_speaker_std_each_with_its_own_speaker():
    backbone = _speaker_model().backbone
    waves, speakers = _utterances()
    stats = speaker_statistics(backbone, waves, speakers)
    batch, lengths = _padded(waves)  # both speakers in one batch
    feats, mask = backbone.log_mel(batch, lengths, row_statistics(stats, speakers))
    for b, (wave, speaker) in enumerate(zip(waves, speakers)):
        raw = _reference_log_mel(backbone, wave)
        reference = (raw - stats[speaker].mean.double().numpy()) / stats[speaker].std.double().numpy()
        t = raw.shape[0]
        assert int(mask[b].sum()) == t
        np.testing.assert_allclose(feats[b, :t].double().numpy(), reference, rtol=1e-4, atol=1e-4)
        assert torch.all(feats[b, t:] == 0)
    # the utterance keeps its own mean spectrum relative to its speaker's: per-bin means are not all zero
    assert float(feats[0, : int(mask[0].sum())].mean(0).abs().max()) > 0.01


def test_each_item_of_a_batch_gets_its_own_speakers_statistics():
    model = _speaker_model()
    waves, speakers = _utterances()
    stats = speaker_statistics(model.backbone, waves, speakers)
    batch, lengths = _padded(waves)
    with torch.no_grad():
        together = model(batch, lengths, row_statistics(stats, speakers)).logits
        alone = [model(*_padded([w]), row_statistics(stats, [s])).logits[0] for w, s in zip(waves, speakers)]
        swapped = model(
            batch, lengths, row_statistics(stats, ["B" if s == "A" else "A" for s in speakers])
        ).logits
    torch.testing.assert_close(together, torch.stack(alone), rtol=1e-4, atol=1e-5)
    assert float((swapped - together).abs().max()) > 1e-4  # another speaker's statistics change the output


def test_a_speaker_model_without_statistics_raises_and_says_how_to_give_them():
    model = _speaker_model()
    batch, lengths = _padded(_utterances()[0])
    with pytest.raises(ValueError, match=r"fbank_norm='speaker'.*give speaker_stats"):
        model(batch, lengths)
    with pytest.raises(ValueError, match="give them as speaker_stats"):
        model.backbone.log_mel(batch, lengths)
    wrong = LogMelStatistics(torch.zeros(2, 40), torch.ones(2, 40))
    with pytest.raises(ValueError, match=r"expected \(5, 40\)"):
        model(batch, lengths, wrong)


def test_a_default_model_refuses_speaker_statistics():
    torch.manual_seed(0)
    model = SERModel(SERConfig(labels=LABELS, model=_model_config())).eval()
    batch, lengths = _padded(_utterances()[0])
    stats = LogMelStatistics(torch.zeros(5, 40), torch.ones(5, 40))
    with pytest.raises(ValueError, match="does not use speaker statistics"):
        model(batch, lengths, stats)


def test_speaker_norm_with_an_hf_backbone_is_a_config_error():
    with pytest.raises(ConfigError, match=r"fbank_norm.*'speaker' normalises the fbank backbone's log-mel"):
        ModelConfig(backbone="hf:microsoft/wavlm-base-plus", fbank_norm="speaker")
    assert ModelConfig(fbank_norm="speaker").uses_speaker_statistics
    assert not ModelConfig().uses_speaker_statistics


def test_the_default_bin_model_gives_the_outputs_it_gave_before_speaker_norm():
    """The same seed builds the same "bin" model; its logits and log-mel are those recorded with the
    code before speaker normalisation (the fixture's config, inputs seeded as below)."""
    before = json.loads(DEFAULT_OUTPUTS.read_text())
    config = SERConfig.from_dict(before["config"])
    assert config.model.fbank_norm == "bin"
    torch.manual_seed(0)
    model = SERModel(config).eval()
    g = torch.Generator().manual_seed(1)
    lengths = torch.tensor([16000, 7000, 401])
    waves = torch.randn(3, 16000, generator=g) * torch.tensor([[0.1], [3.0], [1.0]])
    waves = waves * (torch.arange(16000)[None, :] < lengths[:, None])
    with torch.no_grad():
        logits = model(waves, lengths).logits
        feats, _ = model.backbone.log_mel(waves, lengths)
    torch.testing.assert_close(
        logits.double(), torch.tensor(before["logits"], dtype=torch.float64), rtol=1e-5, atol=1e-6
    )
    torch.testing.assert_close(
        feats.abs().sum(dim=(1, 2)).double(),
        torch.tensor(before["log_mel_abs_sum"], dtype=torch.float64),
        rtol=1e-5,
        atol=1e-3,
    )


def test_a_speaker_model_is_not_exported_to_onnx(tmp_path):
    folder = _speaker_model().save_pretrained(tmp_path / "model")
    with pytest.raises(ConfigError, match="not exported"):
        export_onnx(folder, tmp_path / "model.onnx")
    assert not (tmp_path / "model.onnx").exists()


def test_a_speaker_model_round_trips_through_save_pretrained(tmp_path):
    model = _speaker_model()
    loaded = SERModel.from_pretrained(model.save_pretrained(tmp_path / "model"))
    assert loaded.config.model.fbank_norm == "speaker"
    waves, speakers = _utterances()
    stats = row_statistics(speaker_statistics(model.backbone, waves, speakers), speakers)
    batch, lengths = _padded(waves)
    with torch.no_grad():
        torch.testing.assert_close(loaded(batch, lengths, stats).logits, model(batch, lengths, stats).logits)
