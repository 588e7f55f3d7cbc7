"""The pitch track (ser_model.pitch): YIN recovers a tone's F0, rejects noise, counts the log-mel's
frames, forgets the speaker's pitch level, and never depends on the batch."""

from __future__ import annotations

import math

import pytest
import torch
import torchaudio

from ser_model.config import ModelConfig
from ser_model.fbank_backbone import FbankBackbone
from ser_model.pitch import (
    PITCH_CHANNELS,
    _difference_terms,
    frame_deltas,
    pitch_features,
    pitch_frame_lengths,
    track_pitch,
)

SR = 16000


def harmonic_tone(f0_hz: torch.Tensor, harmonics: int = 8) -> torch.Tensor:
    """Σ_k sin(k φ(t)) / k with φ the integral of 2π f0(t): a voice-like tone following the contour f0 (L,)."""
    phase = 2 * math.pi * torch.cumsum(f0_hz.double(), 0) / SR
    return sum(torch.sin(k * phase) / k for k in range(1, harmonics + 1)).float()


def one(wave: torch.Tensor):
    return track_pitch(wave[None], torch.tensor([len(wave)]), SR)


@pytest.mark.parametrize("f0", [70.0, 110.0, 196.0, 330.0, 520.0])
def test_a_harmonic_tone_gives_its_f0_and_is_voiced(f0):
    track = one(harmonic_tone(torch.full((SR,), f0)))
    inner = slice(3, -3)  # frames whose analysis window lies inside the tone
    assert torch.allclose(track.f0_hz[0, inner], torch.full_like(track.f0_hz[0, inner], f0), rtol=0.01)
    assert bool(track.voiced[0, inner].all())


def test_a_gliding_tone_is_followed_frame_by_frame():
    contour = torch.linspace(120.0, 240.0, SR)  # one octave up in a second
    track = one(harmonic_tone(contour))
    centres = torch.arange(track.f0_hz.shape[1]) * 160 + 200  # frame t is centred on t·hop + win/2
    expected = contour[centres]
    assert torch.allclose(track.f0_hz[0, 3:-3], expected[3:-3], rtol=0.02)


def test_white_noise_and_silence_are_unvoiced():
    noise = torch.randn(2 * SR, generator=torch.Generator().manual_seed(0))
    track = one(noise)
    assert float(track.voiced.float().mean()) <= 0.02
    assert float(track.periodicity.mean()) < 0.3
    silence = one(torch.zeros(SR))
    assert not bool(silence.voiced.any())
    assert torch.equal(pitch_features(silence), torch.zeros_like(pitch_features(silence)))


@pytest.mark.parametrize("length", [1, 399, 400, 401, 559, 560, 16000, 48123])
def test_frame_count_is_the_log_mels(length):
    backbone = FbankBackbone(ModelConfig())
    wave = torch.randn(1, length)
    lengths = torch.tensor([length])
    _, mel_mask = backbone.raw_log_mel(wave, lengths)
    track = track_pitch(wave, lengths, SR)
    assert int(pitch_frame_lengths(lengths, SR)[0]) == int(backbone.mel_lengths(lengths)[0])
    assert track.f0_hz.shape[1] == mel_mask.shape[1]
    assert torch.equal(track.mask, mel_mask)


def test_an_octave_up_leaves_the_normalised_track_unchanged():
    contour = 140.0 + 40.0 * torch.sin(torch.linspace(0, 3 * math.pi, 2 * SR))  # an intonation contour
    low = pitch_features(one(harmonic_tone(contour)))
    high = pitch_features(one(harmonic_tone(2 * contour)))
    assert low.shape == high.shape == (1, low.shape[1], PITCH_CHANNELS)
    inner = slice(4, -4)
    assert torch.allclose(low[0, inner, 0], high[0, inner, 0], atol=0.01)  # log-F0 less the median
    assert torch.allclose(low[0, inner, 1], high[0, inner, 1], atol=0.02)  # periodicity
    assert float(low[0, inner, 0].abs().max()) > 0.2  # the contour itself is kept


def test_an_utterance_in_a_batch_gets_its_own_track():
    short = harmonic_tone(torch.linspace(150.0, 250.0, 12000)) + 0.05 * torch.randn(12000)
    long = harmonic_tone(torch.full((20000,), 300.0))
    waves = torch.zeros(2, 20000)
    waves[0, :12000], waves[1] = short, long
    waves[0, 12000:] = 1.0  # what lies past a length must not count
    batch = pitch_features(track_pitch(waves, torch.tensor([12000, 20000]), SR))
    alone = pitch_features(one(short))
    t = alone.shape[1]
    assert torch.allclose(batch[0, :t], alone[0], atol=1e-5)
    assert torch.equal(batch[0, t:], torch.zeros_like(batch[0, t:]))


def test_yin_difference_equals_its_definition():
    frames = torch.randn(3, 667, dtype=torch.float64)
    d, r, energy = _difference_terms(frames, 400, 267)
    for tau in (0, 1, 27, 100, 267):
        direct = ((frames[:, :400] - frames[:, tau : tau + 400]) ** 2).sum(-1)
        assert torch.allclose(d[:, tau], direct, rtol=1e-9, atol=1e-9)
        assert torch.allclose(r[:, tau], (frames[:, :400] * frames[:, tau : tau + 400]).sum(-1))
        assert torch.allclose(energy[:, tau], (frames[:, tau : tau + 400] ** 2).sum(-1))


def test_deltas_equal_torchaudios_on_one_utterance_and_ignore_padding():
    x = torch.randn(1, 37, 2)
    mask = torch.ones(1, 37, dtype=torch.bool)
    reference = torchaudio.functional.compute_deltas(x.transpose(1, 2), win_length=5).transpose(1, 2)
    assert torch.allclose(frame_deltas(x, mask), reference, atol=1e-6)
    padded = torch.cat([x, torch.full((1, 5, 2), 9.0)], 1)
    padded_mask = torch.cat([mask, torch.zeros(1, 5, dtype=torch.bool)], 1)
    out = frame_deltas(padded, padded_mask)
    assert torch.allclose(out[:, :37], reference, atol=1e-6)
    assert torch.equal(out[:, 37:], torch.zeros(1, 5, 2))
