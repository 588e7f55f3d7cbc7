"""flows.roots: the order of the places a corpus root comes from, and the error naming them all.

The Prefect Variable is read through the function the flows use; here a dict stands in for the
Variables of a server (the live read is tests/flows/test_ingest_flow.py)."""

from __future__ import annotations

import pytest

from flows.roots import CorpusRootNotFound, configured_root, resolve_root, root_env_var, root_variable


def variables(**values: str):
    return lambda name: values.get(name.replace("-", "_"))


def test_names():
    assert root_env_var("msp-improv") == "SER_ROOT_MSP_IMPROV"
    assert root_variable("msp-improv") == "ser-root-msp-improv"


def test_parameter_then_variable_then_worker_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SER_ROOT_IEMOCAP", str(tmp_path / "from-env"))
    read = variables(ser_root_iemocap=str(tmp_path / "from-variable"))
    assert resolve_root("iemocap", "s3://corpora/iemocap", read) == (
        "s3://corpora/iemocap",
        "the flow parameter root",
    )
    assert resolve_root("iemocap", None, read) == (
        str(tmp_path / "from-variable"),
        "the Prefect variable ser-root-iemocap",
    )
    assert resolve_root("iemocap", None, variables()) == (
        str(tmp_path / "from-env"),
        "the worker's environment variable SER_ROOT_IEMOCAP",
    )
    assert configured_root("iemocap", variables()) == (
        str(tmp_path / "from-env"),
        "the worker's environment variable SER_ROOT_IEMOCAP",
    )


def test_a_relative_folder_becomes_absolute(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert resolve_root("savee", "corpora/savee", variables())[0] == str(tmp_path / "corpora" / "savee")


def test_no_root_names_every_place_and_how_to_set_it(monkeypatch):
    monkeypatch.delenv("SER_ROOT_IEMOCAP", raising=False)
    with pytest.raises(CorpusRootNotFound) as missing:
        resolve_root("iemocap", None, variables())
    message = str(missing.value)
    for text in (
        "no corpus root for iemocap",
        "the flow parameter root (not given)",
        "the Prefect variable ser-root-iemocap (not set)",
        "the worker's environment variable SER_ROOT_IEMOCAP (not set)",
        "--param root=DIR",
        "prefect variable set ser-root-iemocap DIR",
    ):
        assert text in message, (text, message)
    assert configured_root("iemocap", variables()) is None
