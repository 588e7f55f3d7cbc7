"""The code that produced a result: its git commit and whether the working tree had uncommitted
changes, recorded as tags on MLflow runs (flows/training_runs.py, flows/tune_tracking.py) and in a
model card (ser_model/model_card.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from ser_stack.names import GIT_COMMIT_TAG, GIT_DIRTY_TAG

__all__ = ["code_version"]


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
