"""Fixtures of the data-contract tests: tiny corpora built fresh per test by tests.fixtures.corpora."""

from __future__ import annotations

import pytest

from tests.fixtures.corpora import make_iemocap, make_msp_improv, make_ravdess, make_savee

BUILDERS = {
    "iemocap": make_iemocap,
    "msp-improv": make_msp_improv,
    "ravdess": make_ravdess,
    "savee": make_savee,
}


@pytest.fixture(params=sorted(BUILDERS))
def any_corpus(request, tmp_path):
    """(corpus name, root, expected rows) for each corpus fixture in its official layout."""
    root = tmp_path / request.param
    return request.param, root, BUILDERS[request.param](root)


@pytest.fixture
def ravdess_corpus(tmp_path):
    """(root, expected rows) of a RAVDESS fixture: actors 01-08, 8 files each."""
    root = tmp_path / "ravdess"
    return root, make_ravdess(root)
