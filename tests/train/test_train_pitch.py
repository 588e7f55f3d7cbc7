"""``model.pitch`` in a fit: the training crops read the cached tracks (ser_model.pitch_cache), which a
second fit reads back; with EAM or speed perturbation the batches compute their pitch live."""

from __future__ import annotations

import json
import logging

import pytest

from ser_model.pitch_cache import PITCH_CACHE_DIR
from ser_model.train import fit
from tests.train.synthetic import tiny_config


def pitch_config(**overrides):
    return tiny_config(epochs=1).with_overrides({"model.pitch": True, "eam.enabled": False, **overrides})


def test_a_pitch_fit_caches_the_training_tracks_and_a_second_fit_reads_them(
    synthetic_corpus, tmp_path, caplog
):
    root, manifest, folds = synthetic_corpus
    caplog.set_level(logging.INFO)
    cache = tmp_path / "cache"
    fit(pitch_config(), manifest, folds, 0, root, tmp_path / "a", feature_cache_dir=cache)
    train_rows = manifest[manifest["speaker"].isin(folds.query("fold == 0 and role == 'train'")["speaker"])]
    (folder,) = (cache / PITCH_CACHE_DIR).iterdir()
    entries = {p.stem for p in (folder / "entries").iterdir()}
    assert entries == set(train_rows["sha256"])
    assert f"{len(train_rows)} files, 0 read, {len(train_rows)} computed" in caplog.text
    assert "pitch: training crops read the cached tracks" in caplog.text
    result = json.loads((tmp_path / "a" / "result.json").read_text())
    assert result["test"]["UA"] >= 0.0
    caplog.clear()
    fit(pitch_config(), manifest, folds, 0, root, tmp_path / "b", feature_cache_dir=cache)
    assert f"{len(train_rows)} files, {len(train_rows)} read, 0 computed" in caplog.text


@pytest.mark.parametrize("overrides", [{"eam.enabled": True}, {"train.speed_factors": [0.9, 1.1]}])
def test_with_eam_or_speed_perturbation_the_pitch_is_computed_live(
    synthetic_corpus, tmp_path, caplog, overrides
):
    root, manifest, folds = synthetic_corpus
    caplog.set_level(logging.INFO)
    cache = tmp_path / "cache"
    fit(pitch_config(**overrides), manifest, folds, 0, root, tmp_path / "a", feature_cache_dir=cache)
    assert not (cache / PITCH_CACHE_DIR).exists()
    assert "pitch: training crops read" not in caplog.text
