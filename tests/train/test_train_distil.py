"""Distillation in fit (ser_model.distil, TrainConfig.release_distil): the teacher's probabilities a
student learns are its Predictor's on the same utterances, the student's objective is the
distillation loss, and the distilled release trains its members, then one student it ships alone."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ser_model.audio import load_audio
from ser_model.config_validation import ConfigError
from ser_model.data import audio_files
from ser_model.distil import Teacher, distillation_loss, student_targets
from ser_model.ensemble import SEREnsemble, load_model
from ser_model.inference import Predictor
from ser_model.launch import RELEASE_FOLD
from ser_model.model import SERModel
from ser_model.optimisation import TrainingObjective
from ser_model.release import STUDENT_FOLDER, member_seeds
from ser_model.runtime import Runtime
from ser_model.train import fit, training_splits
from ser_model.training_data import fold_data
from tests.train.synthetic import tiny_config

STUDENT_RECIPE = {"eam.enabled": False, "loss.focal": False, "loss.center": False, "loss.supcon": False}


def student_config(**train: object):
    """tiny_config with the student's recipe (the KL term alone, no EAM), as cpu-fbank's."""
    return tiny_config(**train).with_overrides(STUDENT_RECIPE)


def two_models(seeds=(0, 1)) -> SEREnsemble:
    models = []
    for seed in seeds:
        torch.manual_seed(seed)
        models.append(SERModel(student_config(seed=seed)).eval())
    return SEREnsemble(models).eval()


def predictor_probabilities(model, rows, root) -> np.ndarray:
    """Reference: what `ser predict` gives for the rows' files, at T = 1."""
    files = audio_files(root, rows["path"].astype(str).tolist(), rows["utt_id"].astype(str).tolist())
    waves = [load_audio(f, model.config.model.sample_rate) for f in files]
    return Predictor(model, batch_size=3).probabilities(waves)


def test_the_teacher_probabilities_a_student_learns_are_the_ensembles_predictor_probabilities(
    synthetic_corpus,
):
    root, manifest, folds = synthetic_corpus
    config = student_config()
    splits = training_splits(manifest, folds, 0)
    runtime = Runtime(0, 1, torch.device("cpu"), None)
    data = fold_data(config, splits, root, runtime, score_test=True)
    ensemble = two_models()
    got = student_targets(Teacher(ensemble, {}), config, data, root, runtime)
    reference = predictor_probabilities(ensemble, splits["train"], root)
    assert got.shape == (len(splits["train"]), len(config.labels))
    np.testing.assert_allclose(got.numpy(), reference, rtol=1e-4, atol=1e-5)
    assert student_targets(None, config, data, root, runtime) is None


def test_a_teacher_of_other_classes_or_a_recipe_with_eam_or_mll_is_refused(synthetic_corpus):
    root, manifest, folds = synthetic_corpus
    splits = training_splits(manifest, folds, 0)
    runtime = Runtime(0, 1, torch.device("cpu"), None)
    ensemble = two_models()
    with_eam = tiny_config().with_overrides({**STUDENT_RECIPE, "eam.enabled": True})
    data = fold_data(with_eam, splits, root, runtime, score_test=True)
    with pytest.raises(
        ConfigError, match=r"fit\(teacher=\.\.\.\): \['eam.enabled'\] on; .*expected them false"
    ):
        student_targets(Teacher(ensemble, {}), with_eam, data, root, runtime)
    reordered = student_config().with_overrides({"labels": ("high", "mid", "low")})
    with pytest.raises(ConfigError, match="the teacher's classes .* expected the student's"):
        student_targets(Teacher(ensemble, {}), reordered, data, root, runtime)


def test_a_students_objective_is_the_distillation_loss_at_the_configs_alpha_and_tau():
    config = student_config().with_overrides({"train.distil_alpha": 0.7, "train.distil_temperature": 3.0})
    torch.manual_seed(0)
    model = SERModel(config).eval()  # eval: no dropout or masks, so both forwards agree
    g = torch.Generator().manual_seed(2)
    waves, lengths = 0.1 * torch.randn(3, 16000, generator=g), torch.tensor([16000, 12000, 8000])
    labels = torch.tensor([0, 2, 1])
    teacher = torch.softmax(torch.randn(3, 3, generator=g) * 2, dim=-1)
    targets = torch.nn.functional.one_hot(labels, 3).float()
    objective = TrainingObjective(model, torch.Generator().manual_seed(1))
    with torch.no_grad():
        total, terms = objective(waves, lengths, targets, labels, teacher=teacher)
        plain, plain_terms = objective(waves, lengths, targets, labels)
        expected, _ = distillation_loss(
            model(waves, lengths).logits, teacher, labels, alpha=0.7, temperature=3.0
        )
    assert set(terms) == {"distil_kl", "ce"} and "kl" in plain_terms
    torch.testing.assert_close(total, expected)
    assert float(total) != pytest.approx(float(plain)), "the teacher's term changes the loss"


def test_release_distil_needs_an_ensemble_of_seeds():
    with pytest.raises(
        ConfigError, match=r"TrainConfig\.release_distil: .*expected train\.release_seeds >= 2"
    ):
        tiny_config(release_distil=True)
    with pytest.raises(
        ConfigError, match=r"TrainConfig\.distil_alpha: got 1\.5, expected a weight in \[0, 1\]"
    ):
        tiny_config(distil_alpha=1.5)
    with pytest.raises(
        ConfigError, match=r"TrainConfig\.distil_temperature: got 0\.0, expected a temperature > 0"
    ):
        tiny_config(distil_temperature=0.0)
    config = tiny_config(release_seeds=2, release_holdout=False, release_distil=True)
    assert (config.train.distil_alpha, config.train.distil_temperature) == (0.5, 2.0)


def test_a_distilled_release_with_eam_on_is_refused_before_any_member_trains(synthetic_corpus, tmp_path):
    root, manifest, folds = synthetic_corpus
    config = tiny_config(release_seeds=2, release_holdout=False, release_distil=True)  # EAM and MLL on
    with pytest.raises(ConfigError, match=r"TrainConfig\.release_distil: \['eam.enabled', 'loss.focal'"):
        fit(config, manifest, folds, RELEASE_FOLD, root, tmp_path, resume=False)
    assert not (tmp_path / "member-0").exists()


def test_the_distilled_release_trains_its_members_then_one_student_and_ships_the_student(
    synthetic_corpus, tmp_path
):
    root, manifest, folds = synthetic_corpus
    config = student_config(epochs=2, release_seeds=2, release_holdout=False, seed=3).with_overrides(
        {"train.release_distil": True, "train.distil_alpha": 0.8, "train.distil_temperature": 2.5}
    )
    seen = []

    class Record:
        def on_epoch_end(self, epoch, record):
            seen.append((epoch, record["member"], record.get("student", False), sorted(record["train"])))

    result = fit(config, manifest, folds, RELEASE_FOLD, root, tmp_path, callbacks=[Record()], resume=False)
    members_terms, student_terms = ["kl", "loss"], ["ce", "distil_kl", "loss"]
    assert seen == [
        (1, 0, False, members_terms),
        (2, 0, False, members_terms),
        (3, 1, False, members_terms),
        (4, 1, False, members_terms),
        (5, 2, True, student_terms),
        (6, 2, True, student_terms),
    ]
    seeds = member_seeds(3, 2)
    saved = json.loads((tmp_path / "result.json").read_text())
    distillation = saved["distillation"]
    assert [m["seed"] for m in distillation["members"]] == seeds == [m["seed"] for m in saved["members"]]
    assert (distillation["alpha"], distillation["temperature"], distillation["folder"]) == (
        0.8,
        2.5,
        STUDENT_FOLDER,
    )
    assert (
        saved["selection_rule"].startswith("one student (seed 3")
        and result.selection_rule == saved["selection_rule"]
    )
    student = json.loads((tmp_path / STUDENT_FOLDER / "result.json").read_text())
    assert student["distillation"]["members"] == distillation["members"]
    assert student["speakers"]["train"] == sorted(manifest["speaker"].unique()), "every speaker"
    assert json.loads((tmp_path / STUDENT_FOLDER / "best" / "config.json").read_text())["train"]["seed"] == 3

    shipped = load_model(tmp_path / "best")
    assert isinstance(shipped, SERModel), "the release ships one model, not an ensemble"
    own = SERModel.from_pretrained(tmp_path / STUDENT_FOLDER / "best")
    assert all(torch.equal(v, own.state_dict()[k]) for k, v in shipped.state_dict().items())
    rows = training_splits(manifest, folds, 0)["test"]
    predictor = Predictor.from_pretrained(tmp_path / "best")
    files = audio_files(root, rows["path"].tolist(), rows["utt_id"].tolist())
    got = predictor.probabilities([load_audio(f, 16000) for f in files])
    reference = Predictor(own, temperature=predictor.temperature).probabilities(
        [load_audio(f, 16000) for f in files]
    )
    np.testing.assert_allclose(got, reference, rtol=1e-6)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["member"], r.get("student", False)) for r in lines] == [s[:3] for s in seen]
