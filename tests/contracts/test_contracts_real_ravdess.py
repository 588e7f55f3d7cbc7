"""Ingest of the real RAVDESS subset (actors 01-20, 16 kHz mono FLAC) beside the repository."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from data_contracts.ingest import run_ingest
from data_contracts.labels import LABELS


@pytest.mark.slow
def test_real_ravdess_ingest(shared_ravdess: Path):
    result = run_ingest("ravdess", shared_ravdess, progress=False)
    manifest = result.manifest
    listed_sums = dict(
        reversed(line.split(maxsplit=1))
        for line in (shared_ravdess / "SHA256SUMS").read_text().splitlines()
        if line.strip()
    )
    # This copy holds one byte-identical pair (repetitions 01 and 02 of one Actor_07 take):
    # the second copy is quarantined as a duplicate, every other file is a manifest row.
    duplicates = {
        path for path, digest in listed_sums.items() if list(listed_sums.values()).count(digest) > 1
    }
    assert len(manifest) + len(result.quarantine) == 1200 == len(listed_sums)
    assert len(result.quarantine) == len(duplicates) - 1
    assert set(result.quarantine["reason_code"]) <= {"duplicate"}
    for row in result.quarantine.itertuples():
        assert row.path in duplicates and row.reason.split()[1] in duplicates
    assert dict(zip(manifest["path"], manifest["sha256"])) == {p: listed_sums[p] for p in manifest["path"]}
    assert manifest["label"].nunique() == 8 and set(manifest["label"]) == set(LABELS["ravdess"])
    assert manifest["speaker"].nunique() == 20
    assert result.folds["fold"].nunique() == 5
    assert set(manifest["sample_rate"]) == {16000} and set(manifest["channels"]) == {1}
    assert result.report["out_of_scope"] == {"not_audio": 2}


@pytest.mark.slow
def test_benchmark_script_runs_on_a_few_files(shared_ravdess: Path):
    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [
            sys.executable,
            "benchmarks/ingest_throughput.py",
            "--root",
            str(shared_ravdess),
            "--limit-actors",
            "8",
        ],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "files/s" in done.stdout and "ratio" in done.stdout


def test_data_contracts_imports_no_framework():
    code = (
        "import sys, importlib, pkgutil, data_contracts, data_contracts.corpora\n"
        "for m in pkgutil.walk_packages(data_contracts.__path__, 'data_contracts.'): importlib.import_module(m.name)\n"
        "banned = {'torch', 'torchaudio', 'transformers', 'prefect', 'mlflow'} & set(sys.modules)\n"
        "print(sorted(banned)); sys.exit(1 if banned else 0)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
