"""The feature cache of frozen hf backbones: exact (cached logits = live logits), keyed (a changed
key rebuilds), checked (a corrupted entry is detected and rebuilt), and used by fit."""

from __future__ import annotations

import hashlib
import json
import logging

import numpy as np
import pytest
import soundfile
import torch

from ser_model.config import EAMConfig, ModelConfig, SERConfig
from ser_model.data import EVAL_MAX_SECONDS, UtteranceDataset, collate_padded, random_crop_start
from ser_model.feature_cache import FeatureCache, collate_states
from ser_model.feature_cache_folder import FEATURE_CACHE_DIR, KEY_FILE, key_digest, key_may_fit, read_index
from ser_model.hf_backbone import save_random_hf_backbone
from ser_model.launch import FoldJob
from ser_model.model import SERModel
from ser_model.train import fit
from ser_model.worker import main as worker_main
from tests.train.synthetic import LABELS, tiny_config


@pytest.fixture(scope="module")
def wavlm_folders(tmp_path_factory):
    """Two random tiny WavLMs with the same architecture and different weights."""
    base = tmp_path_factory.mktemp("wavlm")
    return save_random_hf_backbone(base / "seed0", seed=0), save_random_hf_backbone(base / "seed1", seed=1)


def hf_config(folder, mode: str = "frozen", **train) -> SERConfig:
    """tiny_config with a random WavLM in `mode`, EAM off."""
    base = tiny_config(**train)
    model = ModelConfig(backbone=f"hf:{folder}", backbone_mode=mode, flam_heads=2, embed_dim=16)
    return SERConfig(
        labels=base.labels,
        model=model,
        eam=EAMConfig(enabled=False),
        loss=base.loss,
        train=base.train,
        corpus=base.corpus,
    )


def new_cache(root, model: SERModel) -> FeatureCache:
    return FeatureCache(root, model.backbone, trim_db=model.config.model.trim_db)


def live_whole_utterances(model: SERModel, rows, audio_root):
    """The waveforms the cache is computed from (the evaluation view), as one padded batch."""
    view = UtteranceDataset(
        rows, audio_root, LABELS, sample_rate=16000, crop_seconds=EVAL_MAX_SECONDS, random_crop=False
    )
    return collate_padded([view[i] for i in range(len(view))])


@pytest.mark.parametrize("mode", ["frozen", "weighted_sum"])
def test_cached_states_give_the_live_logits_on_whole_utterances(
    synthetic_corpus, wavlm_folders, tmp_path, mode
):
    root, manifest, _ = synthetic_corpus
    torch.manual_seed(0)
    model = SERModel(hf_config(wavlm_folders[0], mode)).eval()
    if mode == "weighted_sum":  # non-uniform layer weights, so that a wrong layer would show
        model.backbone.layer_weights.weights.data = torch.linspace(-1.0, 1.0, model.backbone.n_hidden_states)
    states = new_cache(tmp_path, model).dataset(manifest, root, LABELS)
    cached = collate_states([states[i] for i in range(len(states))])
    live = live_whole_utterances(model, manifest, root)
    with torch.no_grad():
        live_logits = model(live.waves, live.lengths).logits  # a padded batch of every utterance
        cached_logits = model.forward_cached(cached.states, cached.mask).logits
    assert cached.states.shape[1] == len(model.backbone.layer_set)
    torch.testing.assert_close(cached_logits, live_logits, rtol=1e-4, atol=1e-5)


def test_training_windows_are_windows_of_the_live_whole_utterance_states(
    synthetic_corpus, wavlm_folders, tmp_path
):
    """The crop policy: a training crop is a window of the whole utterance's frames, the same
    window the live backbone's frames of the whole utterance give, so the logits are the same."""
    root, manifest, _ = synthetic_corpus
    model = SERModel(hf_config(wavlm_folders[0])).eval()
    crop_seconds, seed, epoch = 0.3, 7, 3
    windows = new_cache(tmp_path, model).dataset(manifest, root, LABELS, crop_seconds=crop_seconds, seed=seed)
    windows.set_epoch(epoch)
    crop_frames = int(model.backbone.frame_lengths(torch.tensor([round(crop_seconds * 16000)]))[0])
    live = live_whole_utterances(model, manifest, root)
    cropped = 0
    with torch.no_grad():
        for i in range(len(windows)):
            states, _ = model.backbone.hidden_states(
                live.waves[i : i + 1, : live.lengths[i]], live.lengths[i : i + 1]
            )
            start = random_crop_start(states.shape[2], crop_frames, seed, epoch, i)
            expected = states[:, :, start : start + crop_frames]  # (1, K', T', D)
            window, _, _ = windows[i]
            cropped += start > 0
            mask = torch.ones(1, expected.shape[2], dtype=torch.bool)
            torch.testing.assert_close(
                model.forward_cached(window[None], mask).logits,
                model.forward_cached(expected, mask).logits,
                rtol=1e-4,
                atol=1e-5,
            )
            assert window.shape[1] == min(crop_frames, windows.cache.n_frames(manifest["sha256"].iloc[i]))
    assert cropped > 0, "no utterance was long enough to be cropped: the test would not test the window"


def test_other_weights_or_layer_set_use_another_cache(synthetic_corpus, wavlm_folders, tmp_path):
    root, manifest, _ = synthetic_corpus
    rows = manifest.iloc[:3]
    first = SERModel(hf_config(wavlm_folders[0])).eval()
    other_weights = SERModel(hf_config(wavlm_folders[1])).eval()
    all_layers = SERModel(hf_config(wavlm_folders[0], "weighted_sum")).eval()
    caches = [new_cache(tmp_path, model) for model in (first, other_weights, all_layers)]
    assert len({cache.folder for cache in caches}) == 3
    live = live_whole_utterances(first, rows, root)
    for model, cache in zip((first, other_weights, all_layers), caches):
        states = cache.dataset(rows, root, LABELS)
        with torch.no_grad():
            expected, _ = model.backbone.hidden_states(live.waves[:1, : live.lengths[0]], live.lengths[:1])
        torch.testing.assert_close(states[0][0], expected[0], rtol=1e-4, atol=1e-5)
    # the same backbone reopened reads what it wrote
    assert new_cache(tmp_path, first).folder == caches[0].folder


def test_a_changed_file_gets_a_new_entry_and_the_others_are_reused(
    synthetic_corpus, wavlm_folders, tmp_path, caplog
):
    root, manifest, _ = synthetic_corpus
    model = SERModel(hf_config(wavlm_folders[0])).eval()
    new_cache(tmp_path / "cache", model).dataset(manifest, root, LABELS)
    # another manifest: one utterance's audio changed (new content, new sha256)
    changed_root = tmp_path / "changed"
    rows = manifest.iloc[:4].copy()
    for rel in rows["path"]:
        (changed_root / rel).parent.mkdir(parents=True, exist_ok=True)
        wave, sr = soundfile.read(root / rel, dtype="float32")
        if rel == rows["path"].iloc[0]:
            wave = np.random.default_rng(0).standard_normal(len(wave)).astype(np.float32) * 0.1
        soundfile.write(changed_root / rel, wave, sr)
    rows.loc[rows.index[0], "sha256"] = "changed-content"
    with caplog.at_level(logging.INFO, logger="ser_model.feature_cache"):
        states = new_cache(tmp_path / "cache", model).dataset(rows, changed_root, LABELS)
    assert "4 utterances, 3 read from the cache, 1 computed" in caplog.text
    live = live_whole_utterances(model, rows, changed_root)
    with torch.no_grad():
        expected, _ = model.backbone.hidden_states(live.waves[:1, : live.lengths[0]], live.lengths[:1])
    torch.testing.assert_close(states[0][0], expected[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("damage", ["flip a byte", "truncate", "delete", "garbage header"])
def test_a_corrupted_entry_is_detected_and_rebuilt_with_a_warning(
    synthetic_corpus, wavlm_folders, tmp_path, caplog, damage
):
    root, manifest, _ = synthetic_corpus
    rows = manifest.iloc[:3]
    model = SERModel(hf_config(wavlm_folders[0])).eval()
    first = new_cache(tmp_path, model)
    original = first.dataset(rows, root, LABELS)[1][0].clone()
    sha = rows["sha256"].iloc[1]
    path = first.folder / "entries" / f"{sha}.safetensors"
    data = bytearray(path.read_bytes())
    if damage == "flip a byte":
        data[-5] ^= 0xFF  # inside the tensor data: the file still parses
        path.write_bytes(bytes(data))
    elif damage == "truncate":
        path.write_bytes(bytes(data[: len(data) // 2]))
    elif damage == "delete":
        path.unlink()
    else:
        path.write_bytes(b"\xff" * 8 + bytes(data[8:]))
    with caplog.at_level(logging.INFO, logger="ser_model.feature_cache"):
        states = new_cache(tmp_path, model).dataset(rows, root, LABELS)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert (
        len(warnings) == 1
        and rows["utt_id"].iloc[1] in warnings[0].getMessage()
        and "recomputing" in warnings[0].getMessage()
    )
    assert "3 utterances, 2 read from the cache, 1 computed" in caplog.text
    torch.testing.assert_close(states[1][0], original)
    index = json.loads((first.folder / "index.json").read_text())
    assert index["entries"][sha]["checksum"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_fit_trains_from_the_cache_as_it_trains_live(synthetic_corpus, wavlm_folders, tmp_path, caplog):
    """EAM off, no crop: the cached and the live run see the same batches and the same backbone
    states, so they train alike; every epoch of the cached run reads the cache, and a second
    fold reuses the first fold's entries. In fp32: the cache holds fp32 states, which a live backbone
    under bf16 autocast (precision "auto" on a CPU with bf16 in hardware) rounds otherwise."""
    root, manifest, folds = synthetic_corpus
    config = hf_config(wavlm_folders[0], epochs=2, max_seconds=None, device="cpu").with_overrides(
        {"train.precision": "fp32"}
    )
    with caplog.at_level(logging.INFO):
        cached = fit(config, manifest, folds, 0, root, tmp_path / "runs" / "fold-0", resume=False)
    epoch_lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert len(epoch_lines) == 2 and all(
        "training and evaluation read the feature cache" in line for line in epoch_lines
    )
    live_config = config.with_overrides({"train.feature_cache": False})
    live = fit(live_config, manifest, folds, 0, root, tmp_path / "live" / "fold-0", resume=False)
    assert not (tmp_path / "live" / "feature-cache").exists()
    for c, v in zip(cached.history, live.history, strict=True):
        assert c["train"]["loss"] == pytest.approx(v["train"]["loss"], rel=1e-4)
        assert c["valid"] == pytest.approx(v["valid"], abs=1e-9)
    assert cached.test["confusion"] == live.test["confusion"]

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ser_model.feature_cache"):
        fit(
            config.with_overrides({"train.epochs": 1}),
            manifest,
            folds,
            1,
            root,
            tmp_path / "runs" / "fold-1",
            resume=False,
        )
    fills = [r.getMessage() for r in caplog.records if "computed" in r.getMessage()]
    assert fills and all(" 0 computed" in line for line in fills)


def test_a_fold_worker_given_a_feature_cache_folder_fills_it_with_a_key_the_flows_find(
    synthetic_corpus, wavlm_folders, tmp_path
):
    """The launch contract's ``--feature-cache``: the worker caches there, not beside its fold
    folder, and the key.json it writes is one that ``key_may_fit`` (the flows' pull and push)
    selects for its config and for no config of another source or layer set."""
    root, manifest, folds = synthetic_corpus
    config = hf_config(wavlm_folders[0], epochs=1, max_seconds=None, device="cpu")
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    config.to_json(inputs / "config.json")
    manifest.to_parquet(inputs / "manifest.parquet")
    folds.to_parquet(inputs / "folds.parquet")
    job = FoldJob(
        "ravdess",
        0,
        inputs / "config.json",
        inputs / "manifest.parquet",
        inputs / "folds.parquet",
        str(root),
        tmp_path / "runs" / "fold-0",
        epochs=1,
        feature_cache_dir=tmp_path / "machine-cache",
    )
    assert worker_main(job.worker_args()) == 0
    assert not (tmp_path / "runs" / FEATURE_CACHE_DIR).exists()
    (folder,) = (tmp_path / "machine-cache").iterdir()
    assert set(read_index(folder)) == set(manifest["sha256"])
    record = json.loads((folder / KEY_FILE).read_text())
    assert key_digest(record["key"]) == folder.name
    assert key_may_fit(record, config)
    assert not key_may_fit(record, hf_config(wavlm_folders[0], "weighted_sum"))
    assert not key_may_fit(record, hf_config(wavlm_folders[1]))
