"""benchmarks/fold_memory.py --long: the long manifest repeats fold 0's training rows, each copy
under its own utt_id, until they hold the asked hours, and keeps the validation and test rows."""

from __future__ import annotations

import pytest

from data_contracts.ingest import run_ingest
from ser_model.train import training_splits
from tests.fixtures.corpora import make_ravdess
from tests.fixtures.scripts import load_script


@pytest.fixture(scope="module")
def fold_memory():
    return load_script("benchmarks/fold_memory.py", "bench_fold_memory")


def test_the_long_manifest_repeats_training_rows_only(fold_memory, tmp_path):
    root = tmp_path / "ravdess"
    make_ravdess(root, actors=range(1, 21), per_actor=2)
    ingest = run_ingest("ravdess", root, progress=False)
    splits = training_splits(ingest.manifest, ingest.folds, 0)
    train_hours = splits["train"]["duration_s"].sum() / 3600

    long, copies = fold_memory.long_manifest(ingest.manifest, ingest.folds, hours=3 * train_hours)

    assert copies == 3
    assert long["utt_id"].is_unique
    assert len(long) == 3 * len(splits["train"]) + len(splits["valid"]) + len(splits["test"])
    base_ids = long["utt_id"].str.split("#").str[0]
    assert set(base_ids[long["utt_id"].str.contains("#")]) == set(splits["train"]["utt_id"])
    held_out = set(splits["valid"]["utt_id"]) | set(splits["test"]["utt_id"])
    assert held_out <= set(long["utt_id"])
