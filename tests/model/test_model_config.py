"""Configs: exact JSON round trip, overrides, and clear rejection of invalid values."""

import dataclasses
import json
import logging
import warnings

import pytest

from ser_model.config import EAMConfig, LossConfig, ModelConfig, SERConfig, TrainConfig
from ser_model.config_validation import ConfigError
from ser_model.metrics import HEADLINE_METRICS

LABELS = ("neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised")


def _full_config() -> SERConfig:
    return SERConfig(
        labels=LABELS,
        corpus="ravdess",
        model=ModelConfig(
            backbone="hf:/tmp/some model",
            backbone_mode="weighted_sum",
            flam_heads=8,
            fbank_channels=(8, 16, 16),
            fbank_time_pools=(1, 2, 2),
        ),
        eam=EAMConfig(mix_prob=0.5, snr_db_low=0.0),
        loss=LossConfig(w_center=0.0, supcon=False),
        train=TrainConfig(epochs=3, lr=3e-4, max_seconds=None, precision="bf16"),
    )


@pytest.mark.parametrize("config", [SERConfig(labels=("a", "b")), _full_config()])
def test_json_round_trip_is_exact(config, tmp_path):
    assert SERConfig.from_json(config.to_json()) == config
    path = tmp_path / "config.json"
    config.to_json(path)
    assert SERConfig.from_json(path) == config
    assert SERConfig.from_dict(config.to_dict()) == config


def test_defaults_follow_the_paper():
    c = SERConfig(labels=LABELS)
    assert (c.train.batch_size, c.train.lr, c.train.center_lr, c.train.lr_decay, c.train.epochs) == (
        16,
        1e-4,
        5e-3,
        7 / 8,
        20,
    )
    assert (c.loss.focal_gamma, c.loss.supcon_tau, c.eam.snr_db_low, c.eam.snr_db_high) == (
        2.0,
        0.07,
        -5.0,
        10.0,
    )
    assert ModelConfig(backbone="hf:microsoft/wavlm-large").n_flam_heads == 16


def test_resolved_defaults_depend_on_the_backbone():
    assert ModelConfig().layer_weights is False and ModelConfig().n_flam_heads == 4
    assert ModelConfig(backbone="hf:x").layer_weights is True
    assert ModelConfig(backbone="hf:x", backbone_mode="frozen").layer_weights is False
    assert (
        ModelConfig(backbone="hf:x", backbone_mode="finetune", use_layer_weights=False).layer_weights is False
    )


def test_overrides_return_a_new_validated_config():
    base = SERConfig(labels=LABELS)
    new = base.with_overrides(
        {"train.epochs": 3, "loss.w_center": 0, "corpus": "ravdess", "model.fbank_time_pools": [2, 2, 1, 1]}
    )
    assert (new.train.epochs, new.loss.w_center, new.corpus, new.model.fbank_time_pools) == (
        3,
        0.0,
        "ravdess",
        (2, 2, 1, 1),
    )
    assert isinstance(new.loss.w_center, float)
    assert base.train.epochs == 20
    switched = base.with_overrides({"model.backbone": "hf:/tmp/x", "model.backbone_mode": "frozen"})
    assert switched.model.layer_weights is False  # unresolved defaults follow the new backbone


def test_unknown_override_names_the_key_and_the_valid_ones():
    with pytest.raises(ConfigError, match=r"unknown key 'train\.epoch'; valid keys: .*'train\.epochs'"):
        SERConfig(labels=LABELS).with_overrides({"train.epoch": 3})


def test_unknown_json_key_is_rejected():
    data = SERConfig(labels=LABELS).to_dict()
    data["loss"]["w_triplet"] = 1.0
    with pytest.raises(
        ConfigError, match=r"SERConfig\.loss: unknown key\(s\) \['w_triplet'\]; valid keys: \['w_kl'"
    ):
        SERConfig.from_dict(data)
    with pytest.raises(ConfigError, match="not valid JSON"):
        SERConfig.from_json("{not json")


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"train.lr": -1.0}, r"TrainConfig\.lr: got -1\.0, expected a learning rate > 0"),
        ({"train.epochs": "3"}, r"TrainConfig\.epochs: got '3' \(str\), expected int"),
        ({"train.epochs": 2.5}, r"TrainConfig\.epochs: got 2\.5"),
        ({"train.precision": "fp8"}, r"TrainConfig\.precision: got 'fp8'"),
        ({"train.lr_decay": 1.5}, r"TrainConfig\.lr_decay"),
        ({"train.device": "gpu"}, r"TrainConfig\.device: got 'gpu'"),
        ({"eam.mix_prob": 1.5}, r"EAMConfig\.mix_prob: got 1\.5, expected a probability"),
        ({"eam.snr_db_low": 20.0}, r"EAMConfig\.snr_db_low: got snr_db_low=20\.0 > snr_db_high=10\.0"),
        ({"loss.supcon_tau": 0.0}, r"LossConfig\.supcon_tau"),
        ({"loss.w_kl": -0.1}, r"LossConfig\.w_kl"),
        ({"loss.kl": False, "loss.focal": False}, "nothing trains the classifier"),
        ({"model.backbone": "wavlm"}, r"ModelConfig\.backbone: got 'wavlm', expected 'fbank' or 'hf:"),
        ({"model.backbone_mode": "frozen"}, "fbank backbone, which is trained from scratch"),
        ({"model.use_layer_weights": True}, "fbank backbone exposes no hidden layers"),
        (
            {"model.backbone": "hf:x", "model.backbone_mode": "frozen", "model.use_layer_weights": True},
            "use backbone_mode='weighted_sum'",
        ),
        ({"model.backbone": "hf:x", "model.sample_rate": 8000}, "SSL speech models expect 16000"),
        ({"model.flam_dropout": 1.0}, r"ModelConfig\.flam_dropout"),
        ({"model.flam_heads": 3}, "fbank_dim=128 is not divisible by flam_heads=3"),
        ({"model.fbank_channels": [], "model.fbank_time_pools": []}, r"ModelConfig\.fbank_channels"),
        (
            {"model.fbank_time_pools": [2, 2]},
            r"ModelConfig\.fbank_time_pools: .*one time pooling factor >= 1 per conv block \(4\)",
        ),
        ({"model.n_mels": 8}, r"ModelConfig\.n_mels: got 8 mel bins for 4 conv blocks .* expected >= 16"),
        ({"model.embed_norm": "group"}, r"ModelConfig\.embed_norm"),
        ({"model.trim_db": 0.0}, r"ModelConfig\.trim_db"),
        ({"train.schedule": "linear"}, r"TrainConfig\.schedule"),
        (
            {"train.select_metric": "f1"},
            r"TrainConfig\.select_metric: got 'f1', expected one of \('WA', 'UA', 'macro_f1'\)",
        ),
        ({"train.select_metric": "Ua"}, r"TrainConfig\.select_metric: got 'Ua'"),
        (
            {"train.warmup_epochs": 20.5},
            r"TrainConfig\.warmup_epochs: got 20\.5, expected 0 <= warmup_epochs <= epochs=20",
        ),
        ({"eam.degenerate_db": 3.0}, r"EAMConfig\.degenerate_db"),
        (
            {"model.fbank_channels": [32, "x", 128, 128]},
            r"^ModelConfig\.fbank_channels\[1\]: got 'x' \(str\), expected int$",
        ),
        (
            {"train.max_seconds": float("inf")},
            r"^TrainConfig\.max_seconds: got inf, expected a finite number$",
        ),
        ({"model.flam_heads": 0}, r"^ModelConfig\.flam_heads: got 0, expected None or a positive integer$"),
        (
            {"train.ema_decay": 1.0},
            r"^TrainConfig\.ema_decay: got 1\.0, expected None or a decay in \(0, 1\)",
        ),
        ({"train.feature_cache": 1}, r"^TrainConfig\.feature_cache: got 1 \(int\), expected bool$"),
        ({"train.epochs": True}, r"^TrainConfig\.epochs: got True \(bool\), expected int$"),
        ({"train.lr": "1e-3"}, r"^TrainConfig\.lr: got '1e-3' \(str\), expected float$"),
        (
            {"model.use_layer_weights": "yes"},
            r"^ModelConfig\.use_layer_weights: got 'yes' \(str\), expected bool \| None$",
        ),
        ({"corpus": 3}, r"^SERConfig\.corpus: got 3 \(int\), expected str \| None$"),
        (
            {"model.backbone_mode": "partial"},
            r"^ModelConfig\.backbone_mode: got 'partial', expected one of \('finetune', 'frozen', 'weighted_sum'\)$",
        ),
        ({"labels": ["a"]}, "expected at least two class names"),
        ({"labels": ["a", "a"]}, "duplicates"),
    ],
)
def test_invalid_values_are_rejected_with_clear_messages(overrides, match):
    with pytest.raises(ConfigError, match=match):
        SERConfig(labels=LABELS).with_overrides(overrides)


def test_constructing_with_an_unknown_or_missing_field_names_it():
    with pytest.raises(
        ConfigError, match=r"^ModelConfig: unknown key\(s\) \['backbon'\]; valid keys: \['backbone', "
    ):
        ModelConfig(backbon="fbank")
    with pytest.raises(ConfigError, match=r"^SERConfig\.labels: missing; expected a list of str$"):
        SERConfig.from_dict({"train": {"epochs": 3}})
    with pytest.raises(
        ConfigError, match=r"^SERConfig\.model: got list, expected an object of ModelConfig fields$"
    ):
        SERConfig.from_dict({"labels": ["a", "b"], "model": []})
    config = SERConfig.from_dict(
        {"labels": ["a", "b"], "model": {"fbank_channels": [8, 8], "fbank_time_pools": [2, 1]}}
    )
    assert config.labels == ("a", "b") and config.model.fbank_channels == (8, 8), (
        "JSON lists read back as tuples"
    )
    assert isinstance(TrainConfig(lr=1).lr, float), "an integer is a float where a float is expected"


def test_configs_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        TrainConfig().epochs = 3


def test_select_metric_is_spelled_as_the_metric_keys():
    assert TrainConfig().select_metric == "UA"
    for metric in HEADLINE_METRICS:
        assert (
            SERConfig(labels=LABELS).with_overrides({"train.select_metric": metric}).train.select_metric
            == metric
        )
    with pytest.raises(ConfigError, match=r"TrainConfig\.select_metric: got 'ua'"):
        TrainConfig(select_metric="ua")  # only saved configs are read with the old spelling


@pytest.mark.parametrize("old, new", [("ua", "UA"), ("wa", "WA")])
def test_a_config_saved_with_the_old_lower_case_select_metric_still_loads(old, new, tmp_path, caplog):
    """config.json files written before the metric keys became "UA" / "WA" held "ua" / "wa"."""
    current = _full_config().with_overrides({"train.select_metric": new})
    data = current.to_dict()
    data["train"]["select_metric"] = old
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    with warnings.catch_warnings(), caplog.at_level(logging.DEBUG):
        warnings.simplefilter("error")
        loaded = SERConfig.from_json(path)
    assert loaded == current and not caplog.records
    assert json.loads(loaded.to_json())["train"]["select_metric"] == new  # saved again in today's spelling
