"""Issue 13 items 1-2: `ser` loads only what the command needs. `ser --help` and `ser ingest
--help` import no torch, MLflow, Prefect, Optuna or pandas (`ser tune --help` reads the study's
defaults from ``ser_model.tuning.settings``, which imports no Optuna), and `ser ingest` itself no
torch, MLflow, Prefect or Optuna, each checked in a fresh interpreter running the console script's
entry point."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.fixtures.corpora import make_ravdess
from tests.fixtures.scripts import fresh_interpreter_report

HEAVY = ("torch", "torchaudio", "transformers", "mlflow", "prefect", "pandas", "pandera", "boto3", "optuna")

# runs flows.cli.main (the `ser` console script) on argv, then prints which HEAVY modules it loaded
CHILD = r"""
import json, sys
from flows.cli import main
try:
    code = main(sys.argv[2:])
except SystemExit as exit_:
    code = exit_.code
print(json.dumps({"code": code, "loaded": sorted(m for m in sys.argv[1].split(",") if m in sys.modules)}))
"""


def ser_in_fresh_interpreter(repo_root, *argv: str) -> dict:
    return fresh_interpreter_report(CHILD, ",".join(HEAVY), *argv)


@pytest.mark.parametrize(
    "argv", [["--help"], ["ingest", "--help"], ["train", "--help"], ["tune", "--help"], ["predict", "--help"]]
)
def test_help_loads_no_heavy_library(repo_root, argv):
    child = ser_in_fresh_interpreter(repo_root, *argv)
    assert child == {"code": 0, "loaded": []}, f"ser {' '.join(argv)} imported {child['loaded']}"


def ingest_argv(tmp_path) -> list[str]:
    """``ser ingest`` of eight synthetic RAVDESS actors under tmp_path/corpus into tmp_path/out."""
    make_ravdess(tmp_path / "corpus", actors=range(1, 9), per_actor=1)
    return ["ingest", "ravdess", str(tmp_path / "corpus"), "--out", str(tmp_path / "out"), "--no-progress"]


def test_ingest_loads_no_torch_mlflow_or_prefect(repo_root, tmp_path):
    child = ser_in_fresh_interpreter(repo_root, *ingest_argv(tmp_path))
    assert child["code"] == 0 and (tmp_path / "out" / "manifest.parquet").is_file()
    assert set(child["loaded"]) <= {"pandas", "pandera"}, f"ser ingest imported {child['loaded']}"


def test_the_check_sees_a_heavy_import(repo_root):
    """The probe can fail: a command that loads torch (export, on a missing model) is reported."""
    child = ser_in_fresh_interpreter(
        repo_root, "export", "--onnx", "--model", "/nonexistent", "--out", "/nonexistent/m.onnx"
    )
    assert child["code"] == 2 and "torch" in child["loaded"]


def test_console_script_ends_with_the_commands_code_and_complete_outputs(repo_root, tmp_path):
    """`flows.cli.console` (the `ser` script) ends the process without module teardown: the exit
    code is the command's, everything printed reaches the pipe, and the files written are whole
    (the tables read back and validate: read_ingest_outputs checks the fingerprint)."""
    from data_contracts.ingest import read_ingest_outputs

    console = [sys.executable, "-c", "from flows.cli import console; console()"]
    done = subprocess.run(
        [*console, *ingest_argv(tmp_path)],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines()[-1].startswith("wrote ") and "report.json" in done.stdout
    assert len(read_ingest_outputs(tmp_path / "out").manifest) == 8
    bad = subprocess.run(
        [*console, "ingest", "ravdess", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o2")],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2 and "is not a directory" in bad.stderr
