"""Audio loading: any rate and channel count in, float32 mono at the model rate out."""

import numpy as np
import pytest
import soundfile
import torch
import torchaudio

from ser_model.audio import AudioDecodeError, load_audio, to_mono


def _tone(sr: int, seconds: float, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.mark.parametrize("sr", [48000, 44100, 22050])
def test_resampling_to_16k_matches_torchaudio_and_keeps_the_tone(tmp_path, sr):
    wave = _tone(sr, 0.5)
    path = tmp_path / f"tone_{sr}.wav"
    soundfile.write(path, wave, sr, subtype="FLOAT")
    out = load_audio(path, 16000)
    reference = torchaudio.functional.resample(torch.from_numpy(wave), sr, 16000).numpy()
    assert out.dtype == np.float32 and out.ndim == 1
    np.testing.assert_allclose(out, reference, atol=2e-5)
    assert len(out) == pytest.approx(0.5 * 16000, abs=1)
    spectrum = np.abs(np.fft.rfft(out))
    peak_hz = np.argmax(spectrum) * 16000 / len(out)
    assert peak_hz == pytest.approx(440.0, abs=4.0)


def test_stereo_is_down_mixed_to_the_channel_mean(tmp_path):
    left, right = _tone(16000, 0.25, 300.0), _tone(16000, 0.25, 500.0)
    path = tmp_path / "stereo.wav"
    soundfile.write(path, np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(path, 16000), (left + right) / 2, atol=1e-7)
    assert to_mono(np.stack([left, right], axis=1)).shape == left.shape


def test_errors_name_the_file(tmp_path):
    missing = tmp_path / "nowhere" / "missing.wav"
    with pytest.raises(AudioDecodeError, match="missing.wav"):
        load_audio(missing)
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"this is not audio at all" * 10)
    with pytest.raises(AudioDecodeError, match="garbage.wav"):
        load_audio(garbage)
    empty = tmp_path / "empty.wav"
    soundfile.write(empty, np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(AudioDecodeError, match="empty.wav.*no samples"):
        load_audio(empty)
