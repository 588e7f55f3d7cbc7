"""What produced a result, recorded as tags on its MLflow runs: the code's git commit (and
whether the tree had uncommitted changes) and the versions of the packages that shape a result."""

from __future__ import annotations

import subprocess
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path

from ser_stack.names import GIT_COMMIT_TAG, GIT_DIRTY_TAG, VERSION_TAG_PREFIX

PACKAGES = ("torch", "torchaudio", "transformers", "mlflow", "prefect", "pandas", "pandera", "numpy")


def code_version(repo_dir: str | Path) -> dict[str, str]:
    """Git commit of the code that trained (``unknown`` outside a git checkout) and whether the
    working tree had uncommitted changes."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", *args], cwd=repo_dir, capture_output=True, text=True, timeout=20, check=True
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip()

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {
        GIT_COMMIT_TAG: commit or "unknown",
        GIT_DIRTY_TAG: "unknown" if status is None else str(bool(status)).lower(),
    }


def package_versions(packages: Iterable[str] = PACKAGES) -> dict[str, str]:
    """``{"ser.version.torch": "2.14.1", ...}`` for the packages that shape a result."""
    versions = {}
    for name in packages:
        try:
            versions[VERSION_TAG_PREFIX + name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[VERSION_TAG_PREFIX + name] = "not installed"
    return versions
