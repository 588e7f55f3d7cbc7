"""Fixtures of the training tests: two torch threads, one synthetic corpus per session."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from tests.fixtures.torch_threads import two_torch_threads  # noqa: F401 - autouse fixture
from tests.train.synthetic import write_synthetic_corpus


@pytest.fixture(scope="session")
def synthetic_corpus(tmp_path_factory) -> tuple[Path, pd.DataFrame, pd.DataFrame]:
    root = tmp_path_factory.mktemp("synthetic_corpus")
    manifest, folds = write_synthetic_corpus(root)
    return root, manifest, folds
