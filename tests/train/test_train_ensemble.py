"""Seed ensembles (ser_model.ensemble) and the release that ships one (TrainConfig.release_seeds):
the mean probability against a reference computed here, the folder round trip, every scoring path
(Predictor, evaluation, ONNX) on an ensemble folder, and fit's ensemble release with its resume."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import onnxruntime
import pytest
import torch
from safetensors.torch import load_file

from ser_model.config_validation import ConfigError
from ser_model.ensemble import ENSEMBLE_FILE, SEREnsemble, is_ensemble, load_model
from ser_model.evaluation import evaluate_rows
from ser_model.export import export_onnx
from ser_model.inference import Predictor
from ser_model.launch import RELEASE_FOLD
from ser_model.metrics import ensemble_rule
from ser_model.model import SERModel
from ser_model.release import member_seeds
from ser_model.train import fit, training_splits
from tests.train.synthetic import tiny_config


def members(n: int = 3) -> list[SERModel]:
    out = []
    for seed in range(n):
        torch.manual_seed(seed)
        out.append(SERModel(tiny_config(seed=seed)).eval())
    return out


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    waves = 0.1 * torch.randn(3, 24000, generator=generator)
    lengths = torch.tensor([24000, 16000, 9000])
    return waves * (torch.arange(24000)[None] < lengths[:, None]), lengths


def test_the_ensemble_is_the_mean_probability_of_its_members():
    models = members(3)
    ensemble = SEREnsemble(models).eval()
    waves, lengths = batch()
    with torch.no_grad():
        reference = np.mean([torch.softmax(m(waves, lengths).logits, -1).numpy() for m in models], axis=0)
        logits = ensemble(waves, lengths).logits
    np.testing.assert_allclose(torch.softmax(logits, -1).numpy(), reference, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(torch.exp(logits).sum(-1).numpy(), 1.0, atol=1e-5)
    assert (logits.argmax(-1).numpy() == reference.argmax(-1)).all()
    assert ensemble.labels == models[0].labels and ensemble.config == models[0].config


def test_the_folder_round_trips_and_load_model_reads_either_kind(tmp_path):
    ensemble = SEREnsemble(members(2)).eval()
    folder = ensemble.save_pretrained(tmp_path / "ensemble")
    assert is_ensemble(folder) and {"config.json", "labels.json", ENSEMBLE_FILE, "member-0", "member-1"} <= {
        p.name for p in folder.iterdir()
    }
    loaded = load_model(folder)
    assert isinstance(loaded, SEREnsemble) and not loaded.training
    waves, lengths = batch(1)
    with torch.no_grad():
        torch.testing.assert_close(loaded(waves, lengths).logits, ensemble(waves, lengths).logits)
    single = ensemble.members[0].save_pretrained(tmp_path / "single")
    assert not is_ensemble(single) and isinstance(load_model(single), SERModel)


def test_members_of_other_recipes_and_broken_folders_are_refused_with_what_is_expected(tmp_path):
    (first,) = members(1)
    other = SERModel(replace(tiny_config(), labels=("a", "b", "c"))).eval()
    with pytest.raises(ValueError, match="member 1 differs from member 0"):
        SEREnsemble([first, other])
    with pytest.raises(ValueError, match="at least two models"):
        SEREnsemble([first])
    folder = SEREnsemble(members(2)).save_pretrained(tmp_path / "e")
    (folder / ENSEMBLE_FILE).write_text(
        json.dumps({"format": "ser-ensemble", "version": 1, "members": ["../x"]})
    )
    with pytest.raises(ValueError, match="naming sub-folders of the ensemble"):
        load_model(folder)
    (folder / ENSEMBLE_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="cannot read the ensemble's member list"):
        load_model(folder)


def test_predictor_and_onnx_score_an_ensemble_folder_by_its_mean_probability(tmp_path):
    models = members(2)
    folder = SEREnsemble(models).save_pretrained(tmp_path / "ensemble")
    rng = np.random.default_rng(0)
    waves = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (12000, 30000)]
    got = Predictor.from_pretrained(folder).probabilities(waves)
    reference = np.mean([Predictor(m).probabilities(waves) for m in models], axis=0)
    np.testing.assert_allclose(got, reference, rtol=1e-5, atol=1e-6)

    out = export_onnx(folder, tmp_path / "ensemble.onnx")
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    wave = waves[1]
    (probabilities,) = session.run(
        ["probabilities"], {"waves": wave[None], "lengths": np.array([len(wave)], dtype=np.int64)}
    )
    with torch.no_grad():
        expected = np.mean(
            [
                torch.softmax(m(torch.from_numpy(wave)[None], torch.tensor([len(wave)])).logits, -1).numpy()
                for m in models
            ],
            axis=0,
        )
    np.testing.assert_allclose(probabilities, expected, atol=1e-4)


def test_an_ensemble_release_needs_the_release_on_every_speaker():
    with pytest.raises(ConfigError, match=r"TrainConfig\.release_seeds: .*release_holdout=false"):
        tiny_config(release_seeds=2)
    assert tiny_config(release_seeds=2, release_holdout=False).train.release_seeds == 2


def test_two_base_seeds_share_no_member_and_seed_0_keeps_its_single_model():
    assert member_seeds(0, 3) == [0, 1, 2] and member_seeds(1, 3) == [3, 4, 5]
    assert all(
        not set(member_seeds(a, m)) & set(member_seeds(b, m))
        for m in (2, 3, 5)
        for a in range(6)
        for b in range(a)
    )


def test_fit_ships_the_ensemble_of_its_seeds_and_resumes_member_by_member(synthetic_corpus, tmp_path):
    root, manifest, folds = synthetic_corpus
    config = tiny_config(epochs=2, release_seeds=2, release_holdout=False, seed=7)
    seen = []

    class Record:
        def on_epoch_end(self, epoch, record):
            seen.append((epoch, record["member"]))

        def on_fit_end(self, result):
            seen.append(("end", result.selection_rule))

    result = fit(config, manifest, folds, RELEASE_FOLD, root, tmp_path, callbacks=[Record()], resume=False)
    assert seen == [(1, 0), (2, 0), (3, 1), (4, 1), ("end", ensemble_rule([14, 15], 2))]
    saved = json.loads((tmp_path / "result.json").read_text())
    assert [m["seed"] for m in saved["members"]] == [14, 15] and saved["selected_epoch"] == 2
    first = json.loads((tmp_path / "member-0" / "result.json").read_text())
    assert (saved["data"], saved["code_version"]) == (first["data"], first["code_version"])
    card = (tmp_path / "best" / "MODEL_CARD.md").read_text()
    assert saved["data"]["fingerprint"] in card and saved["calibration"]["source"] in card
    for m, seed in enumerate((14, 15)):
        member = json.loads((tmp_path / f"member-{m}" / "result.json").read_text())
        assert member["speakers"]["train"] == sorted(manifest["speaker"].unique())
        assert (
            json.loads((tmp_path / f"member-{m}" / "best" / "config.json").read_text())["train"]["seed"]
            == seed
        )
    shipped = load_model(tmp_path / "best")
    assert isinstance(shipped, SEREnsemble) and len(shipped.members) == 2
    for m, member in enumerate(shipped.members):
        own = load_file(str(tmp_path / f"member-{m}" / "best" / "model.safetensors"))
        assert all(torch.equal(v, own[k]) for k, v in member.state_dict().items())
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["member"]) for r in lines] == [(1, 0), (2, 0), (3, 1), (4, 1)]
    rows = training_splits(manifest, folds, 0)["test"]
    assert evaluate_rows(shipped, rows, root)["n"] == len(rows), "fit's evaluation scores the ensemble"

    member_state = tmp_path / "member-1" / "checkpoints" / "last"
    before = {p.name: p.stat().st_mtime_ns for p in member_state.iterdir()}
    again = fit(config, manifest, folds, RELEASE_FOLD, root, tmp_path, resume=True)
    assert {p.name: p.stat().st_mtime_ns for p in member_state.iterdir()} == before, (
        "a finished member is not trained again"
    )
    assert [r["train"] for r in again.history] == [r["train"] for r in result.history]
