"""Hostile bytes and lines never raise anything but the documented errors, and never hang."""

from __future__ import annotations

import io
import re
import struct

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from data_contracts.audio import AudioChecks, probe_audio
from data_contracts.corpora.iemocap import read_emo_evaluation
from data_contracts.corpora.msp_improv import read_evaluation
from data_contracts.errors import AudioCheckError

OBJECT_ADDRESS = re.compile(r"0x[0-9a-fA-F]{4,}|<[^<>]* object at ")
SETTINGS = settings(max_examples=60, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
REASONS = {
    "empty",
    "unreadable",
    "sample_rate",
    "channels",
    "duration",
    "truncated",
    "non_finite",
    "silence",
    "clipped",
}


def wav_header(rate: int, channels: int, bits: int, data_bytes: int, fmt: int = 1) -> bytes:
    """A canonical 44-byte RIFF/WAVE header, fields as given (possibly absurd)."""
    block = (channels * bits // 8) & 0xFFFF
    return (
        b"RIFF"
        + struct.pack("<I", (36 + data_bytes) & 0xFFFFFFFF)
        + b"WAVE"
        + b"fmt "
        + struct.pack("<IHHIIHH", 16, fmt, channels, rate, (rate * block) & 0xFFFFFFFF, block, bits)
        + b"data"
        + struct.pack("<I", data_bytes & 0xFFFFFFFF)
    )


def good_wav() -> bytes:
    buffer = io.BytesIO()
    t = np.arange(8000) / 16000
    sf.write(
        buffer, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 16000, format="WAV", subtype="PCM_16"
    )
    return buffer.getvalue()


GOOD = good_wav()


def probe_or_documented_error(data: bytes):
    try:
        return probe_audio(data, "x.wav", AudioChecks())
    except AudioCheckError as err:
        assert err.reason_code in REASONS
        assert str(err).startswith("x.wav: ")
        assert not OBJECT_ADDRESS.search(str(err)), f"reason holds a Python object address: {err}"
        return err


@SETTINGS
@given(st.binary(max_size=4096))
def test_random_bytes(data):
    probe_or_documented_error(data)


@SETTINGS
@given(st.integers(min_value=0, max_value=len(GOOD)))
def test_truncated_files(cut):
    outcome = probe_or_documented_error(GOOD[:cut])
    if cut < len(GOOD):
        assert isinstance(outcome, AudioCheckError)


@SETTINGS
@given(
    rate=st.one_of(st.integers(0, 2**32 - 1), st.sampled_from([0, 1, 8000, 16000, 2**31 - 1])),
    channels=st.integers(0, 65535),
    bits=st.sampled_from([0, 7, 8, 16, 24, 32, 64]),
    declared=st.one_of(st.integers(0, 2**32 - 1), st.just(2**32 - 1)),
    body=st.binary(max_size=2048),
    fmt=st.sampled_from([1, 3, 0, 0xFFFE, 0x1234]),
)
def test_absurd_headers_and_huge_declared_lengths(rate, channels, bits, declared, body, fmt):
    probe_or_documented_error(wav_header(rate, channels, bits, declared, fmt) + body)


def encoded(fmt: str, seconds: float = 1.0) -> bytes:
    """One second of tone, 16 kHz mono 16-bit, encoded as ``fmt`` (WAV or FLAC)."""
    buffer = io.BytesIO()
    t = np.arange(int(16000 * seconds)) / 16000
    sf.write(
        buffer, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 16000, format=fmt, subtype="PCM_16"
    )
    return buffer.getvalue()


def reason(data: bytes, name: str) -> tuple[str, str]:
    try:
        probe_audio(data, name, AudioChecks())
    except AudioCheckError as err:
        return err.reason_code, str(err)
    raise AssertionError(f"{name} passed the checks")


@pytest.mark.parametrize("kept", [0.1, 0.3, 0.5, 0.9])
def test_a_cut_flac_and_a_cut_wav_are_both_truncated(kept):
    """The same fault, the same code, whatever the container: cut a file after its header."""
    codes = {}
    for fmt in ("WAV", "FLAC"):
        data = encoded(fmt)
        codes[fmt], message = reason(data[: int(len(data) * kept)], f"a.{fmt.lower()}")
        assert message.startswith(f"a.{fmt.lower()}: ")
    assert codes == {"WAV": "truncated", "FLAC": "truncated"}


@pytest.mark.parametrize(
    "data",
    [
        b"hello, not audio" * 8,
        b"RIFF\x00\x00\x00\x00WAVEjunk",
        b"fLaC\x00\x00",
        GOOD[:30],
        encoded("FLAC")[:30],
    ],
    ids=["text", "riff-without-chunks", "flac-magic-only", "wav-header-cut", "flac-header-cut"],
)
def test_an_unopenable_file_has_a_deterministic_path_first_reason(data):
    """Decoding from memory once put ``<_io.BytesIO object at 0x…>`` into the reason: a message
    that changed on every run. The reason starts with the path and is the same on every call."""
    first = reason(data, "Actor_01/x.wav")
    assert first[0] == "unreadable"
    assert first[1].startswith("Actor_01/x.wav: ")
    assert not OBJECT_ADDRESS.search(first[1]), first[1]
    buffers = [
        io.BytesIO() for _ in range(50)
    ]  # other live objects: a repr'd buffer would get another address
    assert all(reason(data, "Actor_01/x.wav") == first for _ in buffers)


def test_a_valid_file_passes_and_the_probe_reads_its_facts():
    probe = probe_audio(GOOD, "x.wav", AudioChecks())
    assert (probe.sample_rate, probe.channels, probe.frames, probe.duration_s) == (16000, 1, 8000, 0.5)


LINE = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=120)
BRACKETED = st.builds(lambda a, b: "[" + a + "\t" + b, LINE, LINE)
UTD = st.builds(lambda a: "UTD-IMPROV-" + a, LINE)


@SETTINGS
@given(st.lists(st.one_of(LINE, BRACKETED, UTD), max_size=30))
def test_label_readers_never_raise_on_garbage_lines(lines):
    text = "\n".join(lines)
    for reader in (read_emo_evaluation, read_evaluation):
        table = reader(text, "labels.txt")
        for line_no, message in table.problems:
            assert 1 <= line_no <= max(1, len(text.splitlines()))
            assert message
        assert all(isinstance(label, str) for label, _ in table.labels.values())


@SETTINGS
@given(st.lists(st.sampled_from(["neu", "ang", "zzz"]), min_size=1, max_size=5))
def test_emo_evaluation_reads_back_lines_it_is_given(labels):
    text = "".join(
        f"[{i}.0000 - {i + 1}.5000]\tSes01F_impro01_F{i:03d}\t{label}\t[2.5000, 2.5000, 2.5000]\nC-E1:\tx\n"
        for i, label in enumerate(labels)
    )
    table = read_emo_evaluation(text, "Ses01F_impro01.txt")
    assert table.problems == []
    assert {u: lab for u, (lab, _) in table.labels.items()} == {
        f"Ses01F_impro01_F{i:03d}": lab for i, lab in enumerate(labels)
    }
