"""fit(): outputs, selection on validation speakers, exact resume, crash-safe checkpoints."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from ser_model import checkpoint as checkpoint_module
from ser_model.checkpoint import STATE_FILE, load_training_state, resolve_checkpoint
from ser_model.data import DataSplitError
from ser_model.evaluation import evaluate_rows
from ser_model.launch import RELEASE_FOLD
from ser_model.metrics import last_epoch_rule
from ser_model.model import SERModel
from ser_model.train import fit, training_splits
from tests.train.synthetic import expected_selected_epoch, tiny_config


class StopAfter:
    """A callback that kills the run after `epochs` epochs (the checkpoint of that epoch is written)."""

    def __init__(self, epochs: int):
        self.epochs = epochs

    def on_epoch_end(self, epoch, record):
        if epoch == self.epochs:
            raise KeyboardInterrupt(f"simulated kill after epoch {epoch}")


class Recorder:
    def __init__(self):
        self.epochs, self.checkpoints, self.results = [], [], []

    def on_epoch_end(self, epoch, record):
        self.epochs.append((epoch, record))

    def on_checkpoint(self, path):
        self.checkpoints.append(path)

    def on_fit_end(self, result):
        self.results.append(result)


def _weights(folder):
    return load_file(str(folder / "model.safetensors"))


def test_fit_writes_metrics_result_and_selects_on_validation_speakers(synthetic_corpus, tmp_path):
    root, manifest, folds = synthetic_corpus
    recorder = Recorder()
    result = fit(
        tiny_config(epochs=3), manifest, folds, 1, root, tmp_path, callbacks=[recorder], resume=False
    )

    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2, 3]
    for record in lines:
        assert {"loss", "kl", "focal", "center", "supcon"} <= set(record["train"])
        assert {"WA", "UA", "macro_f1"} <= set(record["valid"])
    assert lines[1]["lr"] == pytest.approx(lines[0]["lr"] * 7 / 8)
    best_ua = max(r["valid"]["UA"] for r in lines)
    assert result.selected_epoch == next(r["epoch"] for r in lines if r["valid"]["UA"] == best_ua)

    saved = json.loads((tmp_path / "result.json").read_text())
    assert saved["selected_epoch"] == result.selected_epoch
    assert saved["speakers"] == {"train": ["S00", "S03"], "valid": ["S02"], "test": ["S01"]}
    assert "validation speakers ['S02']" in saved["selection_rule"]
    assert "test speakers ['S01'] never used for selection" in saved["selection_rule"]
    for split, n in (("valid", 6), ("test", 6)):
        metrics = saved[split]
        assert metrics["n"] == n
        assert sum(map(sum, metrics["confusion"])) == n
        assert set(metrics["per_class_recall"]) == {"low", "mid", "high"}
    assert saved["valid"]["UA"] == pytest.approx(best_ua)

    assert [e for e, _ in recorder.epochs] == [1, 2, 3]
    assert len(recorder.checkpoints) == 3 and recorder.results == [result]
    best = SERModel.from_pretrained(tmp_path / "best")
    assert best.labels == ("low", "mid", "high")

    # the last epoch's weights on the same test speakers, recorded beside the selected epoch's
    last = SERModel.from_pretrained(tmp_path / "best")
    last.load_state_dict(_weights(tmp_path / "checkpoints" / "last"))
    reference = evaluate_rows(last, training_splits(manifest, folds, 1)["test"], root, device="cpu")
    assert saved["test_last_epoch"]["confusion"] == reference["confusion"]
    assert saved["test_last_epoch"]["UA"] == pytest.approx(reference["UA"])


def test_killed_run_resumes_to_bit_identical_weights(synthetic_corpus, tmp_path):
    root, manifest, folds = synthetic_corpus
    config = tiny_config(epochs=3, grad_accum=2)
    fit(config, manifest, folds, 0, root, tmp_path / "straight", resume=False)
    with pytest.raises(KeyboardInterrupt):
        fit(config, manifest, folds, 0, root, tmp_path / "killed", callbacks=[StopAfter(1)], resume=False)
    assert load_training_state(tmp_path / "killed" / "checkpoints" / "last")["epoch"] == 1
    resumed = fit(config, manifest, folds, 0, root, tmp_path / "killed", resume=True)

    straight_w = _weights(tmp_path / "straight" / "checkpoints" / "last")
    resumed_w = _weights(tmp_path / "killed" / "checkpoints" / "last")
    assert straight_w.keys() == resumed_w.keys()
    for name in straight_w:
        assert torch.equal(straight_w[name], resumed_w[name]), name
    straight = json.loads((tmp_path / "straight" / "result.json").read_text())
    assert resumed.selected_epoch == straight["selected_epoch"]
    lines = (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]


def test_checkpoint_write_failing_half_way_keeps_the_previous_one(synthetic_corpus, tmp_path, monkeypatch):
    root, manifest, folds = synthetic_corpus
    config = tiny_config(epochs=2)
    with pytest.raises(KeyboardInterrupt):
        fit(config, manifest, folds, 0, root, tmp_path, callbacks=[StopAfter(1)], resume=False)
    last = tmp_path / "checkpoints" / "last"
    before = {p.name: p.read_bytes() for p in last.iterdir()}

    real_save = torch.save

    def save_then_fail(obj, path, *args, **kwargs):
        real_save(obj, path, *args, **kwargs)
        with open(path, "r+b") as handle:
            handle.truncate(100)
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(checkpoint_module.torch, "save", save_then_fail)
    with pytest.raises(OSError, match="disk full"):
        fit(config, manifest, folds, 0, root, tmp_path, resume=True)
    monkeypatch.undo()

    assert resolve_checkpoint(last) == last
    assert {p.name: p.read_bytes() for p in last.iterdir()} == before
    assert load_training_state(last)["epoch"] == 1
    assert not any(p.name.endswith(".tmp") for p in last.parent.iterdir())
    result = fit(config, manifest, folds, 0, root, tmp_path, resume=True)
    assert load_training_state(last)["epoch"] == 2
    history = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history] == [1, 2], "the resumed run kept epoch 1's record"
    assert result.selected_epoch == expected_selected_epoch(history), "epoch 1's score survived the resume"


def test_crash_between_the_renames_falls_back_to_the_old_checkpoint(tmp_path):
    old = tmp_path / ".last.old"
    old.mkdir()
    (old / STATE_FILE).write_bytes(b"x")
    assert resolve_checkpoint(tmp_path / "last") == old


def test_resume_refuses_a_different_configuration(synthetic_corpus, tmp_path):
    root, manifest, folds = synthetic_corpus
    with pytest.raises(KeyboardInterrupt):
        fit(tiny_config(epochs=2), manifest, folds, 0, root, tmp_path, callbacks=[StopAfter(1)], resume=False)
    with pytest.raises(ValueError, match=r"different configuration.*train\.lr"):
        fit(tiny_config(epochs=2, lr=1e-2), manifest, folds, 0, root, tmp_path, resume=True)


def test_a_fold_resumes_when_only_release_settings_changed_and_the_release_does_not(
    synthetic_corpus, tmp_path
):
    root, manifest, folds = synthetic_corpus
    with pytest.raises(KeyboardInterrupt):
        fit(
            tiny_config(epochs=2),
            manifest,
            folds,
            0,
            root,
            tmp_path / "fold",
            callbacks=[StopAfter(1)],
            resume=False,
        )
    first = json.loads((tmp_path / "fold" / "metrics.jsonl").read_text().splitlines()[0])
    release_settings = tiny_config(epochs=2, release_holdout=False, release_seeds=2)
    resumed = fit(release_settings, manifest, folds, 0, root, tmp_path / "fold", resume=True)
    assert [r["epoch"] for r in resumed.history] == [1, 2] and resumed.history[0] == first

    with pytest.raises(KeyboardInterrupt):
        fit(
            tiny_config(epochs=2),
            manifest,
            folds,
            RELEASE_FOLD,
            root,
            tmp_path / "rel",
            callbacks=[StopAfter(1)],
            resume=False,
        )
    with pytest.raises(ValueError, match=r"different configuration.*train\.release_holdout"):
        fit(
            tiny_config(epochs=2, release_holdout=False),
            manifest,
            folds,
            RELEASE_FOLD,
            root,
            tmp_path / "rel",
            resume=True,
        )


def test_release_fold_trains_on_all_but_fold0_validation_speakers(synthetic_corpus):
    _, manifest, folds = synthetic_corpus
    splits = training_splits(manifest, folds, RELEASE_FOLD)
    assert sorted(splits["valid"]["speaker"].unique()) == ["S01"]
    assert sorted(splits["train"]["speaker"].unique()) == ["S00", "S02", "S03"]
    assert splits["test"].empty


def test_release_without_holdout_trains_on_every_speaker(synthetic_corpus):
    _, manifest, folds = synthetic_corpus
    splits = training_splits(manifest, folds, RELEASE_FOLD, holdout=False)
    assert sorted(splits["train"]["utt_id"]) == sorted(manifest["utt_id"])
    assert splits["valid"].empty and splits["test"].empty
    fold = training_splits(manifest, folds, 0, holdout=False)
    assert fold["valid"].equals(training_splits(manifest, folds, 0)["valid"]), "folds always validate"


@pytest.mark.parametrize("ema_decay", [None, 0.9])
def test_release_without_holdout_ships_the_last_epoch_without_validating(
    synthetic_corpus, tmp_path, ema_decay
):
    root, manifest, folds = synthetic_corpus
    config = tiny_config(epochs=2, release_holdout=False, ema_decay=ema_decay)
    result = fit(config, manifest, folds, RELEASE_FOLD, root, tmp_path, resume=False)

    assert result.speakers["train"] == sorted(manifest["speaker"].unique())
    assert result.speakers["valid"] == [] and result.speakers["test"] == []
    assert (result.selected_epoch, result.valid, result.test) == (2, {}, {})
    saved = json.loads((tmp_path / "result.json").read_text())
    assert saved["selection_rule"] == last_epoch_rule(2) and saved["selected_epoch"] == 2
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2] and not any("valid" in r for r in lines)

    last = resolve_checkpoint(tmp_path / "checkpoints" / "last")
    shipped = _weights(tmp_path / "best")
    if ema_decay is None:
        expected = _weights(last)
    else:  # the averaged weights ship, not the last raw ones
        expected = load_training_state(last)["ema"]["shadow"]
        raw = _weights(last)
        assert any(not torch.equal(shipped[k], raw[k]) for k in shipped if k in raw)
    floating = [k for k, v in shipped.items() if v.dtype.is_floating_point and k in expected]
    assert floating, "the shipped weights and the reference share their names"
    for key in floating:
        torch.testing.assert_close(shipped[key], expected[key].to(shipped[key].dtype), rtol=0, atol=0)


def test_empty_split_and_unknown_labels_are_bad_data(synthetic_corpus, tmp_path):
    root, manifest, folds = synthetic_corpus
    no_valid = folds[folds["role"] != "valid"]
    with pytest.raises(DataSplitError, match="valid split holds no utterance"):
        fit(tiny_config(), manifest, no_valid, 0, root, tmp_path, resume=False)
    relabelled = manifest.assign(label=manifest["label"].replace({"mid": "surprised"}))
    with pytest.raises(DataSplitError, match="surprised"):
        fit(tiny_config(), relabelled, folds, 0, root, tmp_path, resume=False)
