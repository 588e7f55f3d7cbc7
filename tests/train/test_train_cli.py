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
from ser_model.cli import main
from ser_model.cli.arguments import parse_overrides
from ser_model.cli.hooks import ModelSourceError
from ser_model.cli.train import train_config
from ser_model.config_validation import ConfigError
from ser_model.model import SERModel
from tests.fixtures.corpora import make_ravdess, ser_ingest
from tests.train.synthetic import tiny_config

METRICS_LINE = re.compile(
    r"^test: WA (\d+\.\d\d)% UA (\d+\.\d\d)% macro-F1 (\d+\.\d\d)% \(n=(\d+)\)$", re.MULTILINE
)


def test_overrides_are_read_as_json_values_and_validated():
    assert parse_overrides(
        ["train.lr=3e-4", "model.fbank_time_pools=[2,2,1,1]", "model.backbone=fbank", "train.grad_clip=null"]
    ) == {
        "train.lr": 3e-4,
        "model.fbank_time_pools": [2, 2, 1, 1],
        "model.backbone": "fbank",
        "train.grad_clip": None,
    }
    config = train_config("savee", "fbank", None, 3, ["train.lr=3e-4", "model.fbank_time_pools=[2,2,1,1]"])
    assert (
        config.train.epochs == 3 and config.train.lr == 3e-4 and config.model.fbank_time_pools == (2, 2, 1, 1)
    )
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
    assert (
        main(["export", "--onnx", "--model", str(tmp_path / "model"), "--out", str(tmp_path / "m.onnx")]) == 0
    )
    assert (tmp_path / "m.onnx").is_file()
    assert main(["predict", str(tmp_path / "missing.wav"), "--model", str(tmp_path / "model")]) == 2
    assert "missing.wav" in capsys.readouterr().err


@pytest.mark.slow
def test_train_one_ravdess_fold_then_evaluate(shared_ravdess, tmp_path, capsys):
    small = [
        "model.fbank_dim=64",
        "model.fbank_layers=1",
        "model.n_mels=64",
        "train.max_seconds=2.5",
        "train.batch_size=32",
        "train.eval_batch_size=32",
        "train.lr=1e-3",
    ]
    argv = [
        "train",
        "--corpus",
        "ravdess",
        "--root",
        str(shared_ravdess),
        "--backbone",
        "fbank",
        "--fold",
        "0",
        "--epochs",
        "2",
        "--out",
        str(tmp_path / "fold0"),
    ]
    assert main(argv + [arg for item in small for arg in ("--set", item)]) == 0
    out = capsys.readouterr().out
    match = METRICS_LINE.search(out)
    assert match, out
    result = json.loads((tmp_path / "fold0" / "result.json").read_text())
    calibration = result["calibration"]
    assert f"T {calibration['temperature']:.3f} fitted on the validation speakers" in out
    assert f"test ECE {calibration['ECE_before']:.4f} -> {calibration['ECE_after']:.4f}" in out
    assert (tmp_path / "fold0" / "best" / "MODEL_CARD.md").is_file()
    wa, ua, f1, n = match.groups()
    assert float(wa) == pytest.approx(100 * result["test"]["WA"], abs=0.006)
    assert float(ua) == pytest.approx(100 * result["test"]["UA"], abs=0.006)
    assert float(f1) == pytest.approx(100 * result["test"]["macro_f1"], abs=0.006)
    test_speakers = set(result["speakers"]["test"])
    assert int(n) == result["test"]["n"] and len(test_speakers) == 4
    assert not test_speakers & set(result["speakers"]["valid"]) and not test_speakers & set(
        result["speakers"]["train"]
    )
    assert "never used for selection" in result["selection_rule"]

    assert (
        main(
            [
                "evaluate",
                "--model",
                str(tmp_path / "fold0" / "best"),
                "--corpus",
                "ravdess",
                "--root",
                str(shared_ravdess),
                "--fold",
                "0",
                "--json",
                str(tmp_path / "eval.json"),
            ]
        )
        == 0
    )
    evaluated = json.loads((tmp_path / "eval.json").read_text())
    assert evaluated["confusion"] == result["test"]["confusion"], (
        "evaluate reproduces the fold's test metrics"
    )


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
    assert ser_ingest(root, tmp_path / "out") == 0
    assert "no fold protocol fits" in capsys.readouterr().err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["utterances"] == 240 and report["folds"] == {}
    assert len(pd.read_parquet(tmp_path / "out" / "manifest.parquet")) == 240

    torch.manual_seed(0)
    SERModel(replace(tiny_config(), labels=LABELS["ravdess"])).save_pretrained(tmp_path / "model")
    argv = [
        "evaluate",
        "--model",
        str(tmp_path / "model"),
        "--corpus",
        "ravdess",
        "--root",
        str(root),
        "--split",
        "all",
        "--json",
        str(tmp_path / "eval.json"),
    ]
    assert main(argv) == 0
    assert "(n=240)" in capsys.readouterr().out
    confusion = np.asarray(json.loads((tmp_path / "eval.json").read_text())["confusion"])
    assert confusion.sum(axis=1).tolist() == list(report["classes"].values()), (
        "every utterance scored once, under its true class"
    )


def test_a_model_uri_goes_through_the_resolver_registered_for_its_prefix(tmp_path, capsys):
    """`main(resolvers=...)` is the hook flows.cli uses for models:/: the resolver gets the URI in
    either spelling of --model, also after -v, fetches into a scratch folder that is deleted when
    the command ends, and the command answers as it does from the folder itself."""
    torch.manual_seed(0)
    SERModel(tiny_config()).save_pretrained(tmp_path / "model")
    wav = tmp_path / "a.wav"
    soundfile.write(wav, (0.2 * np.sin(np.arange(16000) * 0.03)).astype(np.float32), 16000)
    fetched, scratch = [], []

    def copy_checkpoint(uri, folder):
        fetched.append(uri)
        scratch.append(folder)
        return shutil.copytree(tmp_path / "model", folder / "checkpoint")

    assert main(["predict", str(wav), "--json", "--model", str(tmp_path / "model")]) == 0
    from_folder = json.loads(capsys.readouterr().out)
    for argv in (
        ["predict", str(wav), "--json", "--model", "models:/m@champion"],
        ["-v", "predict", str(wav), "--json", "--model=models:/m@champion"],
    ):
        assert main(argv, resolvers={"models:/": copy_checkpoint}) == 0
        assert json.loads(capsys.readouterr().out) == from_folder
    assert fetched == ["models:/m@champion"] * 2
    assert scratch and not any(folder.exists() for folder in scratch), (
        "the scratch folder outlives the command"
    )


def test_a_model_uri_without_a_resolver_or_that_cannot_be_fetched_exits_2(tmp_path, capsys):
    assert main(["predict", str(tmp_path / "a.wav"), "--model", "models:/ser-ravdess@champion"]) == 2
    err = capsys.readouterr().err
    assert "models:/ser-ravdess@champion" in err and "no resolver" in err

    def unreachable(uri, folder):
        raise ModelSourceError(f"cannot fetch {uri}: registry unreachable")

    assert (
        main(
            ["export", "--onnx", "--model=models:/m/3", "--out", str(tmp_path / "m.onnx")],
            resolvers={"models:/": unreachable},
        )
        == 2
    )
    assert "ser export: error: cannot fetch models:/m/3: registry unreachable" in capsys.readouterr().err


@pytest.mark.slow
def test_train_from_what_ser_ingest_wrote_uses_that_manifest_not_a_new_ingest(tmp_path, monkeypatch, capsys):
    """Issue 12: `ser train --manifest DIR` trains on the rows `ser ingest --out DIR` wrote. Actors
    added to the root after ingest are not trained on (a second ingest would have taken them and
    redrawn the folds), and a relative root at ingest still resolves from another folder."""
    make_ravdess(tmp_path / "corpus", actors=range(1, 9), per_actor=3)
    monkeypatch.chdir(tmp_path)
    assert main(["ingest", "ravdess", "corpus", "--out", "ingested", "--no-progress", "--workers", "1"]) == 0
    make_ravdess(tmp_path / "corpus", actors=[9, 10], per_actor=3)
    replace(tiny_config(epochs=1), labels=LABELS["ravdess"]).to_json(tmp_path / "tiny.json")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    argv = [
        "train",
        "--manifest",
        str(tmp_path / "ingested"),
        "--fold",
        "0",
        "--config",
        str(tmp_path / "tiny.json"),
        "--out",
        str(tmp_path / "fold0"),
    ]
    assert main(argv) == 0, capsys.readouterr().err
    result = json.loads((tmp_path / "fold0" / "result.json").read_text())
    manifest = pd.read_parquet(tmp_path / "ingested" / "manifest.parquet")
    folds = pd.read_parquet(tmp_path / "ingested" / "folds.parquet")
    for role in ("train", "valid", "test"):
        assert result["speakers"][role] == sorted(folds.query("fold == 0 and role == @role")["speaker"]), role
    assert {"Actor_09", "Actor_10"}.isdisjoint(manifest["speaker"])
    assert result["test"]["n"] == int(manifest["speaker"].isin(result["speakers"]["test"]).sum())


def test_train_and_evaluate_refuse_a_manifest_folder_they_cannot_trust(tmp_path, capsys):
    make_ravdess(tmp_path / "corpus", actors=range(1, 9), per_actor=1)
    out = tmp_path / "ingested"
    assert ser_ingest(tmp_path / "corpus", out) == 0
    capsys.readouterr()
    train = ["train", "--fold", "0", "--out", str(tmp_path / "fold0")]

    assert main(train + ["--manifest", str(tmp_path / "corpus")]) == 2
    assert (
        "manifest.parquet, quarantine.parquet, folds.parquet, report.json missing" in capsys.readouterr().err
    )
    assert main(train + ["--manifest", str(out), "--corpus", "savee"]) == 2
    assert f"{out} holds a ravdess manifest" in capsys.readouterr().err
    assert main(train) == 2
    assert (
        "give --manifest DIR (written by ser ingest) or both --corpus and --root" in capsys.readouterr().err
    )

    report = json.loads((out / "report.json").read_text())
    (out / "report.json").write_text(json.dumps({**report, "fingerprint": "0" * 64}))
    assert main(train + ["--manifest", str(out)]) == 2
    assert "different ingests or were edited" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(tmp_path / "m"), "--manifest", str(out), "--split", "all"]) == 2
    assert not (tmp_path / "fold0").exists(), "nothing trained on a refused folder"


def test_a_release_on_every_speaker_prints_its_rule_and_has_no_validation_split(tmp_path, capsys):
    make_ravdess(tmp_path / "corpus", actors=range(1, 9), per_actor=2)
    assert ser_ingest(tmp_path / "corpus", tmp_path / "ingested") == 0
    replace(tiny_config(epochs=1), labels=LABELS["ravdess"]).to_json(tmp_path / "tiny.json")
    capsys.readouterr()
    data = ["--manifest", str(tmp_path / "ingested")]
    argv = ["train", *data, "--fold", "-1", "--config", str(tmp_path / "tiny.json")]
    argv += ["--set", "train.release_holdout=false", "--out", str(tmp_path / "release")]
    assert main(argv) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "every speaker, none held out" in out and "valid:" not in out
    result = json.loads((tmp_path / "release" / "result.json").read_text())
    assert len(result["speakers"]["train"]) == 8 and result["valid"] == {}

    model = ["--model", str(tmp_path / "release" / "best")]
    assert main(["evaluate", *model, *data, "--fold", "-1", "--split", "valid"]) == 2
    assert "trained on every speaker, none was held out" in capsys.readouterr().err
    assert main(["evaluate", *model, *data, "--fold", "-1", "--split", "train"]) == 0
    assert "Actor_01, Actor_02" in capsys.readouterr().out
