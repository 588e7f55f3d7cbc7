"""Fixtures of the long-recording tests: two torch threads and a small random RAVDESS model."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.recordings import random_ravdess_checkpoint
from tests.fixtures.torch_threads import two_torch_threads  # noqa: F401 - autouse fixture


@pytest.fixture(scope="session")
def ravdess_checkpoint(tmp_path_factory) -> Path:
    return random_ravdess_checkpoint(tmp_path_factory.mktemp("ravdess_model") / "best")
