"""Fixtures of the training tests: two torch threads, one synthetic corpus per session."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from tests.train.synthetic import write_synthetic_corpus


@pytest.fixture(autouse=True)
def _two_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def synthetic_corpus(tmp_path_factory) -> tuple[Path, pd.DataFrame, pd.DataFrame]:
    root = tmp_path_factory.mktemp("synthetic_corpus")
    manifest, folds = write_synthetic_corpus(root)
    return root, manifest, folds
