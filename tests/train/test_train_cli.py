"""The `ser` command line on local folders."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import soundfile
import torch

from data_contracts.labels import LABELS
from ser_model.cli import main, parse_overrides, train_config
from ser_model.config import ConfigError
from ser_model.model import SERModel
from tests.train.synthetic import tiny_config

METRICS_LINE = re.compile(r"^test: WA (\d+\.\d\d)% UA (\d+\.\d\d)% macro-F1 (\d+\.\d\d)% \(n=(\d+)\)$", re.MULTILINE)


def test_overrides_are_read_as_json_values_and_validated():
    assert parse_overrides(["train.lr=3e-4", "model.fbank_time_pools=[2,2,1,1]", "model.backbone=fbank", "train.grad_clip=null"]) == {
        "train.lr": 3e-4, "model.fbank_time_pools": [2, 2, 1, 1], "model.backbone": "fbank", "train.grad_clip": None,
    }
    config = train_config("savee", "fbank", None, 3, ["train.lr=3e-4", "model.fbank_time_pools=[2,2,1,1]"])
    assert config.train.epochs == 3 and config.train.lr == 3e-4 and config.model.fbank_time_pools == (2, 2, 1, 1)
    assert config.labels[0] == "angry" and config.corpus == "savee"
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["train.lr"])
    with pytest.raises(ConfigError, match="train.nonsense"):
        train_config("savee", None, None, None, ["train.nonsense=1"])


def test_predict_and_export_from_a_checkpoint_folder(tmp_path, capsys):
    torch.manual_seed(0)
    SERModel(tiny_config()).save_pretrained(tmp_path / "model")
    wave = (0.2 * np.sin(np.arange(24000) * 0.05)).astype(np.float32)
    soundfile.write(tmp_path / "a.wav", np.stack([wave, wave], axis=1), 24000)
    assert main(["predict", str(tmp_path / "a.wav"), "--model", str(tmp_path / "model"), "--json"]) == 0
    line = json.loads(capsys.readouterr().out.strip())
    assert line["file"].endswith("a.wav") and line["label"] in ("low", "mid", "high")
    assert sum(line["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
    assert main(["export", "--onnx", "--model", str(tmp_path / "model"), "--out", str(tmp_path / "m.onnx")]) == 0
    assert (tmp_path / "m.onnx").is_file()
    assert main(["predict", str(tmp_path / "missing.wav"), "--model", str(tmp_path / "model")]) == 2
    assert "missing.wav" in capsys.readouterr().err


@pytest.mark.slow
def test_train_one_ravdess_fold_then_evaluate(shared_ravdess, tmp_path, capsys):
    small = ["model.fbank_dim=64", "model.fbank_layers=1", "model.n_mels=64", "train.max_seconds=2.5", "train.batch_size=32",
             "train.eval_batch_size=32", "train.lr=1e-3"]
    argv = ["train", "--corpus", "ravdess", "--root", str(shared_ravdess), "--backbone", "fbank", "--fold", "0",
            "--epochs", "2", "--out", str(tmp_path / "fold0")]
    assert main(argv + [arg for item in small for arg in ("--set", item)]) == 0
    out = capsys.readouterr().out
    match = METRICS_LINE.search(out)
    assert match, out
    result = json.loads((tmp_path / "fold0" / "result.json").read_text())
    wa, ua, f1, n = match.groups()
    assert float(wa) == pytest.approx(100 * result["test"]["WA"], abs=0.006)
    assert float(ua) == pytest.approx(100 * result["test"]["UA"], abs=0.006)
    assert float(f1) == pytest.approx(100 * result["test"]["macro_f1"], abs=0.006)
    test_speakers = set(result["speakers"]["test"])
    assert int(n) == result["test"]["n"] and len(test_speakers) == 4
    assert not test_speakers & set(result["speakers"]["valid"]) and not test_speakers & set(result["speakers"]["train"])
    assert "never used for selection" in result["selection_rule"]

    assert main(["evaluate", "--model", str(tmp_path / "fold0" / "best"), "--corpus", "ravdess", "--root", str(shared_ravdess),
                 "--fold", "0", "--json", str(tmp_path / "eval.json")]) == 0
    evaluated = json.loads((tmp_path / "eval.json").read_text())
    assert evaluated["confusion"] == result["test"]["confusion"], "evaluate reproduces the fold's test metrics"


def test_help_says_model_takes_a_folder_or_a_registry_uri(capsys):
    for command in ("predict", "evaluate", "export"):
        with pytest.raises(SystemExit) as exit_:
            main([command, "--help"])
        assert exit_.value.code == 0
        text = " ".join(capsys.readouterr().out.split())
        assert "checkpoint folder" in text and "models:/NAME@ALIAS" in text, (command, text)


@pytest.mark.parametrize(
    ("extra", "message"),
    [(["--split", "all", "--fold", "0"], "drop --fold"), (["--split", "test"], "needs --fold K")],
)
def test_evaluate_wants_a_fold_exactly_when_the_split_is_a_fold_split(tmp_path, capsys, extra, message):
    argv = ["evaluate", "--model", str(tmp_path / "none"), "--corpus", "ravdess", "--root", str(tmp_path)]
    assert main(argv + extra) == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_a_held_out_set_without_folds_is_ingested_and_scored_whole(shared_ravdess, tmp_path, capsys):
    """Issue 11 item 10: four held-out RAVDESS actors (too few for any fold protocol) ingest to
    240 rows, and ``evaluate --split all`` scores every one of them. The corpus source refuses
    symlinks leaving its root, so the four actors are copied into tmp_path."""
    root = tmp_path / "held-out"
    for actor in ("Actor_17", "Actor_18", "Actor_19", "Actor_20"):
        shutil.copytree(shared_ravdess / actor, root / actor)
    assert main(["ingest", "ravdess", str(root), "--out", str(tmp_path / "out"), "--no-progress", "--workers", "1"]) == 0
    assert "no fold protocol fits" in capsys.readouterr().err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["utterances"] == 240 and report["folds"] == {}
    assert len(pd.read_parquet(tmp_path / "out" / "manifest.parquet")) == 240

    torch.manual_seed(0)
    SERModel(replace(tiny_config(), labels=LABELS["ravdess"])).save_pretrained(tmp_path / "model")
    argv = ["evaluate", "--model", str(tmp_path / "model"), "--corpus", "ravdess", "--root", str(root), "--split", "all",
            "--json", str(tmp_path / "eval.json")]
    assert main(argv) == 0
    assert "(n=240)" in capsys.readouterr().out
    confusion = np.asarray(json.loads((tmp_path / "eval.json").read_text())["confusion"])
    assert confusion.sum(axis=1).tolist() == list(report["classes"].values()), "every utterance scored once, under its true class"
