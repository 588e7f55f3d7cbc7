"""The guards in tests/conftest.py, run on a throwaway copy of the test folder: under infra/test a
missing data folder fails its tests instead of skipping them, and a traceback the stack logs while
the tests run fails the session, naming the log and the exception."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TRACEBACK = (
    'Traceback (most recent call last):\n  File "x.py", line 1, in f\nRuntimeError: scheduler loop died\n'
)


@pytest.fixture
def scratch_repo(repo_root, tmp_path) -> Path:
    """<tmp>/repo with the project's tests/conftest.py, ser_stack and infra/, and no ../shared beside it."""
    repo = tmp_path / "repo"
    (repo / "tests").mkdir(parents=True)
    shutil.copy(repo_root / "tests" / "conftest.py", repo / "tests" / "conftest.py")
    (repo / "infra").symlink_to(repo_root / "infra")
    # its own ser_stack, so that SHARED_RAVDESS (beside the repository) points beside the scratch copy
    # (`python -m pytest` puts the scratch folder first on sys.path)
    shutil.copytree(repo_root / "ser_stack", repo / "ser_stack", ignore=shutil.ignore_patterns("__pycache__"))
    return repo


def run_pytest(repo: Path, test_file: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    (repo / "tests" / "test_probe.py").write_text(test_file)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SER_REQUIRE") and k != "CI"}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_probe.py"],
        cwd=repo,
        env={**clean, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_missing_data_skips_only_when_not_required(scratch_repo):
    probe = "def test_needs_ravdess(shared_ravdess):\n    assert shared_ravdess.is_dir()\n"
    relaxed = run_pytest(scratch_repo, probe, {})
    assert relaxed.returncode == 0 and "1 skipped" in relaxed.stdout, relaxed.stdout
    required = run_pytest(scratch_repo, probe, {"SER_REQUIRE_DATA": "1"})
    assert required.returncode == 1 and "RAVDESS not found" in required.stdout, required.stdout


def test_a_traceback_logged_by_the_stack_during_the_session_fails_it(scratch_repo, tmp_path):
    logs = tmp_path / "state" / "logs"
    logs.mkdir(parents=True)
    (logs / "prefect.log").write_text(
        "old news\n" + TRACEBACK.replace("scheduler loop died", "before the session")
    )
    probe = (
        "import os\nfrom pathlib import Path\n\n"
        "def test_while_the_stack_runs():\n"
        f"    with open(Path(os.environ['SER_STATE_DIR']) / 'logs' / 'prefect.log', 'a') as log:\n"
        f"        log.write({TRACEBACK!r})\n"
    )
    env = {"SER_REQUIRE_STACK": "1", "SER_STATE_DIR": str(tmp_path / "state")}
    done = run_pytest(scratch_repo, probe, env)
    assert done.returncode == 1, done.stdout
    assert "prefect.log: RuntimeError: scheduler loop died" in done.stdout
    assert "before the session" not in done.stdout
    quiet = run_pytest(scratch_repo, "def test_nothing_logged():\n    pass\n", env)
    assert quiet.returncode == 0, quiet.stdout
