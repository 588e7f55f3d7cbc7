"""Starting a training from another model (ser_model.warm_start, `ser train --init`): what is copied,
what stays fresh, what is refused."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from data_contracts.labels import LABELS
from ser_model.cli import main
from ser_model.config_validation import ConfigError
from ser_model.ensemble import SEREnsemble
from ser_model.model import SERModel
from ser_model.model_card import MODEL_CARD_FILE
from ser_model.warm_start import PARTS, InitModel, parameter_part, warm_start
from tests.fixtures.corpora import make_ravdess, ser_ingest
from tests.train.synthetic import tiny_config

BODY = ("backbone", "flam")


def with_loss_parameters(config):
    """``config`` with the class centers and the SupCon projection on, so every part has parameters."""
    return config.with_overrides({"loss.center": True, "loss.supcon": True})


def built(config, seed: int) -> SERModel:
    torch.manual_seed(seed)
    return SERModel(config)


def state(model) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in model.state_dict().items()}


def keys_of(model, parts) -> list[str]:
    return [key for key in model.state_dict() if parameter_part(key) in parts]


@pytest.fixture
def source(tmp_path):
    """A trained-looking source: random weights of seed 0, BatchNorm statistics moved off their defaults."""
    model = built(with_loss_parameters(tiny_config()), 0)
    with torch.no_grad():
        for value in model.state_dict().values():
            if value.is_floating_point():
                value.add_(0.01 * torch.randn_like(value).abs() + 0.001)
    model.save_pretrained(tmp_path / "source")
    return model, InitModel.local(tmp_path / "source")


def test_every_parameter_and_buffer_belongs_to_exactly_one_part():
    model = built(with_loss_parameters(tiny_config()), 0)
    by_part = {part: keys_of(model, (part,)) for part in PARTS}
    assert all(by_part.values()), f"a part with no parameter: {by_part}"
    assert sum(len(keys) for keys in by_part.values()) == len(model.state_dict())


def test_the_same_classes_copy_every_part(source):
    model_source, init = source
    target = built(with_loss_parameters(tiny_config()), 1)
    record = warm_start(target, init)
    expected = model_source.state_dict()
    assert all(torch.equal(value, expected[key]) for key, value in target.state_dict().items())
    assert record["head"] == "copied" and record["copied"] == list(PARTS)
    assert record["source"] == str(init.folder) and record["source_labels"] == list(model_source.labels)


@pytest.mark.parametrize(
    "labels",
    [("calm", "joy", "anger", "fear"), tuple(reversed(tiny_config().labels))],
    ids=["other classes", "same classes in another order"],
)
def test_other_classes_copy_backbone_and_flam_and_keep_a_fresh_head(source, labels):
    model_source, init = source
    target = built(with_loss_parameters(replace(tiny_config(), labels=labels)), 1)
    fresh = state(target)
    record = warm_start(target, init)
    expected = model_source.state_dict()
    after = target.state_dict()
    assert all(torch.equal(after[key], expected[key]) for key in keys_of(target, BODY))
    head = keys_of(target, ("head", "loss"))
    assert head and all(torch.equal(after[key], fresh[key]) for key in head)
    assert after["classifier.weight"].shape == (len(labels), target.config.model.embed_dim)
    assert record["head"] == "new" and record["copied"] == list(BODY)
    assert "the classes differ" in record["head_reason"]


def test_a_source_without_the_runs_loss_parameters_leaves_them_fresh_and_says_so(tmp_path):
    plain = tiny_config().with_overrides({"loss.center": False, "loss.supcon": False})
    built(plain, 0).save_pretrained(tmp_path / "plain")
    target = built(with_loss_parameters(tiny_config()), 1)
    fresh = state(target)
    record = warm_start(target, InitModel.local(tmp_path / "plain"))
    assert record["head"] == "copied" and "centers" in record["kept_fresh"]
    assert torch.equal(target.centers, fresh["centers"])


def test_a_different_backbone_recipe_is_refused_naming_each_key(source):
    _, init = source
    other = tiny_config().with_overrides({"model.fbank_dim": 16, "model.n_mels": 32})
    with pytest.raises(ConfigError) as err:
        warm_start(built(other, 1), init)
    assert "model.fbank_dim: source 32, run 16" in str(err.value)
    assert "model.n_mels: source 40, run 32" in str(err.value)


def test_training_only_fields_and_the_head_size_may_differ(source):
    _, init = source
    config = with_loss_parameters(tiny_config()).with_overrides(
        {"model.flam_dropout": 0.3, "model.spec_time_masks": 0, "model.embed_dim": 8}
    )
    record = warm_start(built(config, 1), init)
    assert record["head"] == "new" and "model.embed_dim: source 16, run 8" in record["head_reason"]


def test_an_ensemble_starts_from_its_first_member(tmp_path):
    members = [built(tiny_config(), seed) for seed in (0, 1)]
    SEREnsemble(members).save_pretrained(tmp_path / "ensemble")
    target = built(tiny_config(), 2)
    record = warm_start(target, InitModel.local(tmp_path / "ensemble"))
    assert record["member"] == "member-0"
    first = members[0].state_dict()
    assert all(torch.equal(value, first[key]) for key, value in target.state_dict().items())


def test_a_folder_that_holds_no_model_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="init .*nowhere: cannot load a model"):
        warm_start(built(tiny_config(), 0), InitModel.local(tmp_path / "nowhere"))


def test_ser_train_init_from_a_local_folder_records_the_start_and_refuses_another_recipe(tmp_path, capsys):
    make_ravdess(tmp_path / "corpus", actors=range(1, 9), per_actor=2)
    assert ser_ingest(tmp_path / "corpus", tmp_path / "ingested") == 0
    config = replace(tiny_config(epochs=1), labels=LABELS["ravdess"])
    config.to_json(tmp_path / "tiny.json")
    renamed = replace(config, labels=tuple(f"x-{label}" for label in config.labels))
    built(renamed, 0).save_pretrained(tmp_path / "champion")
    capsys.readouterr()
    argv = [
        "train",
        "--manifest",
        str(tmp_path / "ingested"),
        "--fold",
        "0",
        "--config",
        str(tmp_path / "tiny.json"),
    ]
    init = ["--init", str(tmp_path / "champion")]
    assert main(argv + init + ["--out", str(tmp_path / "fold0")]) == 0, capsys.readouterr().err
    assert f"started from {tmp_path / 'champion'}: copied backbone, flam; new head" in capsys.readouterr().out
    record = json.loads((tmp_path / "fold0" / "result.json").read_text())["init"]
    assert record["source"] == str(tmp_path / "champion") and record["head"] == "new"
    assert record["source_labels"] == list(renamed.labels)
    card = (tmp_path / "fold0" / "best" / MODEL_CARD_FILE).read_text()
    assert f"- started from `{tmp_path / 'champion'}`: copied backbone, flam; head new (" in card

    assert main(argv + ["--out", str(tmp_path / "scratch")]) == 0
    assert json.loads((tmp_path / "scratch" / "result.json").read_text())["init"] is None
    assert "- started from scratch" in (tmp_path / "scratch" / "best" / MODEL_CARD_FILE).read_text()

    wider = config.with_overrides({"model.fbank_dim": 16})
    built(wider, 0).save_pretrained(tmp_path / "wider")
    capsys.readouterr()
    refused = argv + ["--init", str(tmp_path / "wider"), "--out", str(tmp_path / "refused")]
    assert main(refused) == 2
    assert (
        "backbone recipe differs from this run's (model.fbank_dim: source 16, run 32)"
        in capsys.readouterr().err
    )
