"""The pitch branch (ser_model.pitch_branch), the cached tracks of training crops (ser_model.pitch_cache)
and a model with ``model.pitch`` end to end."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import soundfile
import torch

from ser_model.config import ModelConfig, SERConfig
from ser_model.config_validation import ConfigError
from ser_model.data import UtteranceDataset, collate_to_shapes
from ser_model.ensemble import SEREnsemble
from ser_model.export import OnnxScorer, export_onnx
from ser_model.feature_cache_folder import entry_path
from ser_model.inference import Predictor
from ser_model.losses import multi_loss
from ser_model.model import SERModel
from ser_model.pitch import pitch_features, track_pitch
from ser_model.pitch_branch import PitchBranch, frames_of_pitch
from ser_model.pitch_cache import PitchTracks

SR = 16000


def tone(seconds: float, f0: float, seed: int) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    contour = f0 * (1 + 0.2 * np.sin(2 * np.pi * 0.7 * t))
    phase = 2 * np.pi * np.cumsum(contour) / SR
    wave = sum(np.sin(k * phase) / k for k in range(1, 6))
    return (0.3 * wave + 0.01 * np.random.default_rng(seed).standard_normal(len(t))).astype(np.float32)


@pytest.fixture
def split(tmp_path):
    rows = []
    for i, (seconds, f0) in enumerate([(4.3, 120.0), (2.1, 210.0), (5.0, 300.0)]):
        name = f"u{i}.wav"
        soundfile.write(tmp_path / name, tone(seconds, f0, i), SR)
        rows.append(
            {"path": name, "utt_id": f"u{i}", "label": "a", "duration_s": seconds, "sha256": f"{i:064x}"}
        )
    return tmp_path, pd.DataFrame(rows)


def training_set(root, rows, seed=0):
    return UtteranceDataset(rows, root, ["a"], sample_rate=SR, crop_seconds=3.0, random_crop=True, seed=seed)


def test_crops_are_the_whole_tracks_frames_under_the_crop(split):
    root, rows = split
    dataset = training_set(root, rows)
    tracks = PitchTracks(root / "cache", dataset, rows["sha256"].tolist(), trim_db=None)
    for epoch in (0, 3):
        dataset.set_epoch(epoch)
        crops = tracks.batch([0, 1, 2], 3 * SR)
        for row in range(3):
            full = dataset.full_wave(row)
            whole = pitch_features(track_pitch(torch.from_numpy(full)[None], torch.tensor([len(full)]), SR))[
                0
            ]
            start = dataset.crop_start(row, len(full))
            wave, _, _ = dataset[row]  # the crop the batch holds
            n = 1 + (len(wave) - 400) // 160
            assert torch.equal(crops[row, :n], whole[start // 160 : start // 160 + n])
            assert torch.equal(crops[row, n:], torch.zeros_like(crops[row, n:]))
            # aligned: the crop's own periodicity lies on the cached frames, up to the crop's edges
            live = pitch_features(track_pitch(wave[None], torch.tensor([len(wave)]), SR))[0]
            assert live.shape[0] == n
            assert torch.allclose(live[3:-3, 1], crops[row, 3 : n - 3, 1], atol=0.05)
            contour_live, contour_cached = live[3:-3, 0], crops[row, 3 : n - 3, 0]  # log-F0, medians differ
            shift = (contour_live - contour_cached).median()
            assert torch.allclose(contour_live - shift, contour_cached, atol=0.02)  # within a frame's glide


def test_a_second_run_reads_the_entries_and_a_corrupt_one_is_recomputed(split, caplog):
    root, rows = split
    dataset = training_set(root, rows)
    first = PitchTracks(root / "cache", dataset, rows["sha256"].tolist(), trim_db=None)
    path = entry_path(first.folder, rows["sha256"][1])
    path.write_bytes(b"not a track")
    second = PitchTracks(root / "cache", dataset, rows["sha256"].tolist(), trim_db=None)
    assert "entry of u1 is corrupt" in caplog.text
    for a, b in zip(first.tracks, second.tracks):
        assert torch.equal(a, b)
    other = PitchTracks(root / "cache", dataset, rows["sha256"].tolist(), trim_db=40.0)
    assert other.folder != first.folder  # the trimming is part of the key


@pytest.mark.parametrize("t", [1, 15, 16, 17, 250, 301])
def test_branch_gives_the_cnns_frame_count_and_ignores_padding(t):
    torch.manual_seed(0)
    branch = PitchBranch(16).eval()
    pitch = torch.randn(1, t, 4)
    alone = branch(pitch, torch.ones(1, t, dtype=torch.bool))
    assert alone.shape == (1, math.ceil(t / 16), 32)
    padded = torch.cat([pitch, torch.randn(1, 40, 4)], 1)  # what lies past the mask must not count
    mask = torch.arange(t + 40)[None] < t
    batch = branch(padded, mask)
    assert torch.allclose(batch[:, : alone.shape[1]], alone, atol=1e-6)


def test_frames_of_pitch_computes_cuts_pads_and_refuses_a_wrong_shape():
    waves = torch.from_numpy(tone(1.0, 150.0, 0))[None]
    lengths = torch.tensor([waves.shape[1]])
    live = frames_of_pitch(None, waves, lengths, SR, 110)
    assert torch.equal(live[:, :98], pitch_features(track_pitch(waves, lengths, SR)))
    assert torch.equal(live[:, 98:], torch.zeros(1, 12, 4))
    assert frames_of_pitch(live, waves, lengths, SR, 50).shape == (1, 50, 4)
    with pytest.raises(ValueError, match=r"expected \(1, T, 4\)"):
        frames_of_pitch(torch.zeros(1, 10, 3), waves, lengths, SR, 10)


LABELS = ("neutral", "happy", "sad")


def pitch_config(**model) -> SERConfig:
    return SERConfig(labels=LABELS, model=ModelConfig(pitch=True, **model))


def voiced_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Two voiced utterances, the second padded (to the 0.25 s multiple the log-mel's batches take)."""
    items = [
        (torch.from_numpy(tone(s, f0, i)), 0, i) for i, (s, f0) in enumerate([(2.37, 140.0), (1.21, 260.0)])
    ]
    batch = collate_to_shapes(SR)(items)
    return batch.waves, batch.lengths


def test_a_pitch_model_in_eval_mode_scores_a_padded_batch_as_each_utterance_alone():
    torch.manual_seed(0)
    model = SERModel(pitch_config()).eval()
    waves, lengths = voiced_batch()
    assert waves.shape[1] % (SR // 4) == 0 and waves.shape[1] > int(lengths.min())
    together = model(waves, lengths).logits
    for b in range(2):
        alone = model(waves[b : b + 1, : lengths[b]], lengths[b : b + 1]).logits
        assert torch.allclose(together[b], alone[0], atol=1e-5)
    # the branch is used: other pitch features give other logits
    pitch = frames_of_pitch(None, waves, lengths, SR, 1 + (waves.shape[1] - 400) // 160)
    assert not torch.allclose(model(waves, lengths, pitch=pitch.flip(1)).logits, together, atol=1e-4)
    assert torch.equal(model(waves, lengths, pitch=pitch).logits, together)  # given = computed


def test_a_pitch_model_trains_a_step_and_predicts_the_same_after_save_and_load(tmp_path):
    torch.manual_seed(0)
    model = SERModel(pitch_config())
    branch = model.backbone.pitch_branch.convs[0].weight.detach().clone()
    waves, lengths = voiced_batch()
    labels = torch.tensor([0, 2])
    model.train()
    out = model(
        waves, lengths, pitch=frames_of_pitch(None, waves, lengths, SR, 1 + (waves.shape[1] - 400) // 160)
    )
    total, _ = multi_loss(
        out,
        torch.nn.functional.one_hot(labels, 3).float(),
        labels,
        model.centers,
        model.supcon_proj,
        model.config.loss,
        torch.Generator().manual_seed(0),
    )
    optimiser = torch.optim.Adam(model.main_parameters(), lr=1e-2)
    total.backward()
    optimiser.step()
    assert not torch.equal(model.backbone.pitch_branch.convs[0].weight, branch)  # the branch trains
    model.eval()
    model.save_pretrained(tmp_path / "m")
    loaded = Predictor.from_pretrained(tmp_path / "m")
    assert loaded.model.config.model.pitch
    wave = waves[0, : lengths[0]].numpy()
    expected = torch.softmax(model(waves[:1, : lengths[0]], lengths[:1]).logits, -1)[0].detach().numpy()
    np.testing.assert_allclose(loaded.probabilities([wave])[0], expected, atol=1e-6)


def test_the_pitch_switch_round_trips_and_is_refused_where_it_cannot_act(tmp_path):
    config = pitch_config()
    assert SERConfig.from_json(config.to_json()) == config
    assert SERConfig(labels=LABELS).with_overrides({"model.pitch": True}).model.pitch
    assert not SERConfig(labels=LABELS).model.pitch
    with pytest.raises(ConfigError, match="ModelConfig.pitch"):
        ModelConfig(backbone="hf:microsoft/wavlm-base", pitch=True)
    with pytest.raises(ConfigError, match="pitch"):
        ModelConfig(pitch="yes")
    plain = SERModel(SERConfig(labels=LABELS)).eval()
    waves, lengths = voiced_batch()
    with pytest.raises(ValueError, match="model.pitch is false"):
        plain(waves, lengths, pitch=torch.zeros(2, 10, 4))


def test_the_onnx_graph_of_a_pitch_model_takes_the_pitch_as_a_second_input_and_matches_pytorch(tmp_path):
    import onnxruntime

    torch.manual_seed(0)
    model = SERModel(pitch_config()).eval()
    model.save_pretrained(tmp_path / "m")
    path = export_onnx(tmp_path / "m", tmp_path / "m.onnx")  # checks parity to 1e-4 itself
    names = [i.name for i in onnxruntime.InferenceSession(str(path)).get_inputs()]
    assert names == ["waves", "lengths", "pitch"]
    waves = [tone(1.7, 180.0, 5), tone(0.9, 330.0, 6)]
    expected = Predictor(model).probabilities(waves)
    scorer = OnnxScorer(path, batch_size=2)
    assert scorer.pitch
    np.testing.assert_allclose(scorer.window_probabilities(waves), expected, atol=1e-4)


def test_an_ensemble_computes_the_pitch_once_for_its_members():
    torch.manual_seed(0)
    members = [SERModel(pitch_config()).eval() for _ in range(2)]
    waves, lengths = voiced_batch()
    ensemble = SEREnsemble(members).eval()
    reference = torch.stack([torch.softmax(m(waves, lengths).logits, -1) for m in members]).mean(0)
    assert torch.allclose(torch.softmax(ensemble(waves, lengths).logits, -1), reference, atol=1e-6)


def test_a_training_batch_gets_one_cached_pitch_frame_per_log_mel_frame(split):
    root, rows = split
    dataset = training_set(root, rows)
    tracks = PitchTracks(root / "cache", dataset, rows["sha256"].tolist(), trim_db=None)
    backbone = SERModel(pitch_config()).backbone.eval()
    for indices in ([0, 1, 2], [1], [2, 0]):
        batch = collate_to_shapes(SR)([dataset[i] for i in indices])
        pitch = tracks.batch(batch.indices, batch.waves.shape[1])
        feats, mask = backbone.log_mel(batch.waves, batch.lengths)
        assert pitch.shape == (len(indices), feats.shape[1], 4)
        assert not pitch.abs().sum(2)[~mask].any()  # zero past each crop's frames
        assert pitch.abs().sum(2)[mask].gt(0).float().mean() > 0.9  # the voiced tones' frames hold a track
