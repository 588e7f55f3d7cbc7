"""Hostile audio at the model's door: the training/inference loader (`ser_model.audio.load_audio`)
and the batch API (`Predictor.predict_arrays`, what the pyfunc serves) either return a finite
mono waveform or raise `AudioDecodeError` with a message, whatever bytes, headers, rates, shapes
or file names come in; never another exception, never a hang, never gigabytes of memory.

The ingest side (parsers, label files, the probe, N bad files → N quarantine rows) is covered by
tests/contracts/test_contracts_properties.py and tests/contracts/test_contracts_bad_inputs.py.
"""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ser_model.audio import AudioDecodeError, load_audio, resampling_kernel_size
from ser_model.inference import Predictor
from ser_model.model import SERModel
from tests.contracts.test_contracts_properties import wav_header
from tests.train.synthetic import tiny_config

SETTINGS = settings(
    max_examples=60,
    deadline=5000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
MAX_OUTPUT_BYTES = 64 * 1024**2
"""No input below exceeds a few kB, so no decoded waveform may exceed this."""


def sound(seconds: float = 0.3, rate: int = 16000, fmt: str = "WAV", subtype: str = "PCM_16") -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    buffer = io.BytesIO()
    sf.write(
        buffer, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), rate, format=fmt, subtype=subtype
    )
    return buffer.getvalue()


GOOD = {"wav": sound(), "flac": sound(fmt="FLAC")}


def load_or_refuse(tmp_path, data: bytes, name: str = "x.wav"):
    """load_audio of `data` written to `name`: a finite float32 (N,) waveform or AudioDecodeError naming the file."""
    path = tmp_path / name
    path.write_bytes(data)
    try:
        wave = load_audio(path, 16000)
    except AudioDecodeError as err:
        assert str(path) in str(err)
        return err
    assert wave.dtype == np.float32 and wave.ndim == 1 and len(wave) > 0
    assert np.isfinite(wave).all() and wave.nbytes <= MAX_OUTPUT_BYTES
    return wave


@SETTINGS
@given(data=st.binary(max_size=4096))
def test_random_bytes(tmp_path, data):
    load_or_refuse(tmp_path, data)


@SETTINGS
@given(kind=st.sampled_from(sorted(GOOD)), fraction=st.floats(0.0, 1.0))
def test_truncated_files(tmp_path, kind, fraction):
    data = GOOD[kind]
    cut = int(len(data) * fraction)
    outcome = load_or_refuse(tmp_path, data[:cut], f"x.{kind}")
    if cut < 44:
        assert isinstance(outcome, AudioDecodeError), "no header, no audio"


@SETTINGS
@given(
    rate=st.one_of(
        st.integers(0, 2**32 - 1),
        st.sampled_from([0, 1, 999, 1000, 8000, 16000, 48001, 768000, 768001, 2**31 - 1]),
    ),
    channels=st.integers(0, 65535),
    bits=st.sampled_from([0, 7, 8, 16, 24, 32, 64]),
    declared=st.one_of(st.integers(0, 2**32 - 1), st.just(2**32 - 1)),
    body=st.binary(max_size=2048),
    fmt=st.sampled_from([1, 3, 0, 0xFFFE, 0x1234]),
)
def test_absurd_headers_rates_and_huge_declared_lengths(tmp_path, rate, channels, bits, declared, body, fmt):
    load_or_refuse(tmp_path, wav_header(rate, channels, bits, declared, fmt) + body)


@pytest.mark.parametrize("rate", [1, 7, 999, 48001, 96001, 768001, 2**31 - 1])
def test_absurd_sample_rates_are_refused_with_the_rate_named(tmp_path, rate):
    """A 1 Hz header on 32 kB of samples used to become 1 GB; 48001 Hz asked for a kernel of
    gigabytes. Now: a message naming the rate, decided before any allocation."""
    body = np.zeros(16000, dtype=np.int16).tobytes()
    outcome = load_or_refuse(tmp_path, wav_header(rate, 1, 16, len(body)) + body)
    assert isinstance(outcome, AudioDecodeError) and (
        str(rate) in str(outcome) or "cannot decode" in str(outcome)
    )


@pytest.mark.parametrize(
    "rate", [8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000, 88200, 96000, 192000]
)
def test_every_common_rate_is_accepted(tmp_path, rate):
    assert resampling_kernel_size(rate, 16000) < 10**6
    wave = load_or_refuse(tmp_path, sound(0.2, rate), f"r{rate}.wav")
    assert isinstance(wave, np.ndarray) and abs(len(wave) - 3200) <= 1


def test_non_utf8_file_names_load_and_errors_stay_printable(tmp_path):
    name = os.fsdecode(b"caf\xe9-\xff.wav")
    assert isinstance(load_or_refuse(tmp_path, GOOD["wav"], name), np.ndarray)
    error = load_or_refuse(tmp_path, b"garbage", name)
    assert isinstance(error, AudioDecodeError)
    str(error).encode("utf-8", "backslashreplace")


def test_empty_and_missing_files_are_refused(tmp_path):
    assert isinstance(load_or_refuse(tmp_path, b""), AudioDecodeError)
    with pytest.raises(AudioDecodeError, match="nowhere.wav"):
        load_audio(tmp_path / "nowhere.wav")


# ----------------------------------------------------------------------------- the batch API


@pytest.fixture(scope="module")
def predictor(tmp_path_factory) -> Predictor:
    import torch

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("model")
    SERModel(tiny_config()).save_pretrained(folder)
    return Predictor.from_pretrained(folder)


arrays = st.one_of(
    st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), max_size=3000).map(
        lambda xs: np.asarray(xs, dtype=np.float32)
    ),
    st.tuples(st.integers(0, 2000), st.integers(0, 9)).map(
        lambda shape: np.full(shape, 0.1, dtype=np.float32)
    ),
    st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(0, 3)).map(
        lambda shape: np.zeros(shape, dtype=np.float32)
    ),
)


@SETTINGS
@given(
    wave=arrays, rate=st.one_of(st.integers(-(2**40), 2**40), st.sampled_from([16000, 44100, 48001, 0, -1]))
)
# found by CI: a finite sample so loud that the log-mel power overflows gave NaN probabilities
@example(wave=np.asarray([0.0, 0.0, 6.052353674265074e19], dtype=np.float32), rate=1664)
def test_predict_arrays_answers_or_refuses_with_a_message(predictor, wave, rate):
    try:
        (answer,) = predictor.predict_arrays([(wave, rate)])
    except AudioDecodeError as err:
        assert str(err)
        return
    assert answer["label"] in predictor.labels
    assert sum(answer["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
