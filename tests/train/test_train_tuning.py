"""ser_model.tuning, preset files and weight averaging: the study's rules, checked against
reference computations written here."""

from __future__ import annotations

import json
import math

import optuna
import pytest
import torch
from torch import nn

from ser_model import training_data
from ser_model.config_validation import ConfigError
from ser_model.ema import WeightAverage, ema_decay_at
from ser_model.presets import PRESETS, experiment_config, read_preset_file, write_preset_file
from ser_model.tuning.driver import StudyDriver, best_preset, enqueue_base
from ser_model.tuning.objective import TuningObjective
from ser_model.tuning.settings import StudySettings
from ser_model.tuning.space import (
    SEARCH_SPACES,
    TuningError,
    load_search_space,
    parse_search_space,
    search_space,
    suggest_overrides,
)
from ser_model.tuning.study import open_study, pruning_step, retried_from
from tests.fixtures.studies import open_at_once
from tests.train.synthetic import tiny_config

optuna.logging.set_verbosity(optuna.logging.WARNING)


# ------------------------------------------------------------------------------ search spaces


@pytest.mark.parametrize("name", sorted(SEARCH_SPACES))
def test_every_shipped_space_fits_its_preset_at_every_corner(name):
    base = experiment_config("ravdess", name)
    space = load_search_space(name, base)
    assert set(space) == set(SEARCH_SPACES[name]) and set(space) <= set(base.override_keys())
    assert name in PRESETS, "a shipped space is named after the preset it tunes"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"train.nonsense": {"type": "float", "low": 0, "high": 1}}, "not config keys"),
        ({"train.lr": {"type": "float", "low": 1e-3, "high": 1e-4}}, "low < high"),
        ({"train.lr": {"type": "float", "low": 0.0, "high": 1e-3, "log": True}}, "low > 0"),
        ({"train.lr": {"type": "uniform", "low": 0.0, "high": 1.0}}, "expected one of"),
        ({"train.lr": {"type": "float", "low": 0.0, "high": 1.0, "choices": [1]}}, "unknown field"),
        ({"eam.enabled": {"type": "categorical", "choices": []}}, "non-empty list"),
        (
            {"eam.mix_prob": {"type": "float", "low": 0.0, "high": 2.0}},
            r"eam.mix_prob=2.0 makes an invalid config",
        ),
        ({}, "non-empty JSON object"),
        (
            {"eam.mix_prob": {"type": "float", "low": 0.0, "high": 1.0, "when": {"eam.enabled": True}}},
            "'eam.mix_prob' is conditional on 'eam.enabled', which must be another categorical",
        ),
        (
            {
                "eam.enabled": {"type": "categorical", "choices": [False]},
                "eam.mix_prob": {"type": "float", "low": 0.0, "high": 1.0, "when": {"eam.enabled": True}},
            },
            r"conditional on eam.enabled=True, not one of its choices \[False\]",
        ),
        (
            {
                "eam.enabled": {
                    "type": "categorical",
                    "choices": [False, True],
                    "when": {"model.flam": True},
                },
                "model.flam": {
                    "type": "categorical",
                    "choices": [False, True],
                    "when": {"eam.enabled": True},
                },
            },
            "in a cycle",
        ),
        (
            {"train.lr": {"type": "float", "low": 1e-4, "high": 1e-3, "when": []}},
            '"when" must be a non-empty',
        ),
    ],
)
def test_a_bad_space_is_refused_naming_the_key_and_what_is_expected(spec, message):
    with pytest.raises(TuningError, match=message):
        parse_search_space(spec, experiment_config("ravdess", "cpu-fbank"))


def test_a_conditional_dimension_is_sampled_only_where_its_condition_holds(tmp_path):
    """EAM's knobs in cpu-fbank's space: absent from the trials that leave EAM off (and from the base
    recipe's queued trial, whose EAM is off), present in every trial that turns it on; listed before
    the dimension it depends on, it is still suggested after it. The preset of a trial without
    them keeps the base's values."""
    base = experiment_config("ravdess", "cpu-fbank")
    spec = {
        "eam.mix_prob": {"type": "float", "low": 0.0, "high": 1.0, "when": {"eam.enabled": True}},
        "train.lr": {"type": "float", "low": 3e-4, "high": 3e-3, "log": True},
        "eam.enabled": {"type": "categorical", "choices": [False, True]},
    }
    space = parse_search_space(spec, base)
    assert list(space) == ["train.lr", "eam.enabled", "eam.mix_prob"]
    assert space["eam.mix_prob"].to_dict()["when"] == {"eam.enabled": True}
    assert parse_search_space({k: p.to_dict() for k, p in space.items()}, base) == space
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=1))
    assert enqueue_base(study, space, base) == {"train.lr": base.train.lr, "eam.enabled": False}
    seen = []

    def objective(trial):
        overrides = suggest_overrides(trial, space)
        seen.append(overrides)
        config = base.with_overrides(overrides)
        return config.eam.mix_prob if config.eam.enabled else 2.0

    study.optimize(objective, n_trials=12)
    assert seen[0] == {"train.lr": base.train.lr, "eam.enabled": False}
    on = [v for v in seen if v["eam.enabled"]]
    off = [v for v in seen if not v["eam.enabled"]]
    assert on and off, "the random sampler should try EAM both on and off in 12 trials"
    assert all("eam.mix_prob" in v for v in on) and not any("eam.mix_prob" in v for v in off)
    assert [set(t.params) for t in study.trials] == [set(v) for v in seen]
    preset = best_preset(study, "cpu-fbank")
    assert "eam.mix_prob" not in preset["settings"] and preset["settings"]["eam.enabled"] is False
    config = experiment_config("ravdess", str(write_preset_file(tmp_path / "best.json", preset)))
    assert config.eam.mix_prob == base.eam.mix_prob


def test_cpu_fbank_searches_a_components_knobs_only_with_it_on():
    """EAM's knobs only where EAM is on, each MLL weight only where its term is on; the switches
    themselves are dimensions whose off value is the preset's base."""
    space = search_space("cpu-fbank")
    conditions = {k: p.when for k, p in space.items() if p.when}
    assert conditions == {
        "eam.mix_prob": (("eam.enabled", True),),
        "eam.snr_db_low": (("eam.enabled", True),),
        "eam.degenerate_db": (("eam.enabled", True),),
        "loss.w_focal": (("loss.focal", True),),
        "loss.w_center": (("loss.center", True),),
        "loss.w_supcon": (("loss.supcon", True),),
    }
    base = experiment_config("ravdess", "cpu-fbank")
    for switch in ("eam.enabled", "loss.focal", "loss.center", "loss.supcon"):
        assert list(space[switch].choices) == [False, True], switch
        assert base.value(switch) is False, switch


def test_a_space_file_is_read_and_a_missing_one_named(tmp_path):
    path = tmp_path / "space.json"
    path.write_text(json.dumps({"train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}))
    (param,) = load_search_space(str(path), experiment_config("ravdess")).values()
    assert (param.key, param.low, param.high, param.log) == ("train.lr", 1e-4, 1e-2, True)
    with pytest.raises(TuningError, match="neither a shipped space"):
        load_search_space(str(tmp_path / "none.json"))


@pytest.mark.parametrize("round_", range(2))
def test_processes_opening_one_new_study_at_once_all_get_it(tmp_path, round_):
    """Four processes open a study in a new SQLite file at the same instant (two `ser tune`
    processes started together): every one gets the same study. Without the creation lock one or
    two of the four failed in each round ("table studies already exists")."""
    results = open_at_once(f"sqlite:///{tmp_path / 'study.db'}", "together", tmp_path / "go")
    assert all("study_id" in result for result in results), results
    assert len({result["study_id"] for result in results}) == 1, results
    assert [s.study_name for s in optuna.get_all_study_summaries(f"sqlite:///{tmp_path / 'study.db'}")] == [
        "together"
    ]


def test_pruning_steps_are_percent_of_the_schedule_and_increase_across_folds():
    for epochs in (3, 12, 25):
        steps = [pruning_step(f, e, epochs) for f in range(3) for e in range(1, epochs + 1)]
        assert steps == sorted(steps) and len(set(steps)) == len(steps)
        assert [pruning_step(f, epochs, epochs) for f in range(3)] == [100, 200, 300]
    assert pruning_step(0, 6, 12) == pruning_step(0, 10, 20) == 50, (
        "half way through any schedule is the same step"
    )


# ------------------------------------------------------------------------------ the objective


def test_a_trial_never_reads_a_test_speaker_and_scores_the_mean_best_validation_ua(
    synthetic_corpus, tmp_path, monkeypatch
):
    root, manifest, folds = synthetic_corpus
    loaded: list[set[str]] = []
    original = training_data.UtteranceDataset

    class Recording(original):  # the datasets fit builds: which speakers' audio they hold
        def __init__(self, rows, *args, **kwargs):
            loaded.append(set(rows["speaker"]))
            super().__init__(rows, *args, **kwargs)

    monkeypatch.setattr(training_data, "UtteranceDataset", Recording)
    base = tiny_config(epochs=2)
    space = parse_search_space(
        {
            "train.lr": {"type": "float", "low": 1e-3, "high": 3e-3, "log": True},
            "train.ema_decay": {"type": "categorical", "choices": [None, 0.9]},
        },
        base,
    )
    epochs_seen: list[tuple[int, int]] = []
    objective = TuningObjective(
        base,
        space,
        manifest,
        folds,
        [0, 1],
        root,
        tmp_path / "trials",
        on_epoch=lambda trial, fold, epoch, record: epochs_seen.append((fold, epoch)),
    )
    study = open_study("unit", f"sqlite:///{tmp_path / 'study.db'}")
    study.optimize(objective, n_trials=2)

    test_of = {k: set(folds.loc[(folds["fold"] == k) & (folds["role"] == "test"), "speaker"]) for k in (0, 1)}
    assert len(loaded) == 2 * 2 * 2, (
        "per trial and fold: its training and its validation speakers, nothing else"
    )
    for i, speakers in enumerate(loaded):
        fold = (i // 2) % 2
        assert speakers and not speakers & test_of[fold], (fold, speakers, test_of[fold])
    assert epochs_seen == [(0, 1), (0, 2), (1, 1), (1, 2)] * 2
    for trial in study.trials:
        assert trial.state == optuna.trial.TrialState.COMPLETE
        per_fold = []
        for fold in (0, 1):
            result = json.loads(
                (tmp_path / "trials" / f"trial-{trial.number}" / f"fold-{fold}" / "result.json").read_text()
            )
            assert result["test"] == {} and result["speakers"]["test"], (
                "the test split is named but never scored"
            )
            config = json.loads(
                (
                    tmp_path / "trials" / f"trial-{trial.number}" / f"fold-{fold}" / "best" / "config.json"
                ).read_text()
            )
            assert config["train"]["lr"] == pytest.approx(trial.params["train.lr"])
            assert config["train"]["ema_decay"] == trial.params["train.ema_decay"]
            per_fold.append(result["valid"]["UA"])
        assert trial.value == pytest.approx(sum(per_fold) / 2)
        assert sorted(trial.intermediate_values) == [50, 100, 150, 200]
        assert trial.intermediate_values[100] == pytest.approx(per_fold[0]), (
            "fold 0's best so far at its last epoch"
        )


def test_an_invalid_combination_prunes_the_trial_instead_of_failing_the_study(synthetic_corpus, tmp_path):
    root, manifest, folds = synthetic_corpus
    base = tiny_config()
    space = parse_search_space(
        {
            "loss.kl": {"type": "categorical", "choices": [False]},
            "loss.focal": {"type": "categorical", "choices": [False]},
        }
    )
    study = open_study("invalid", f"sqlite:///{tmp_path / 'study.db'}")
    study.optimize(TuningObjective(base, space, manifest, folds, [0], root, tmp_path / "t"), n_trials=1)
    (trial,) = study.trials
    assert (
        trial.state == optuna.trial.TrialState.PRUNED
        and "nothing trains the classifier" in trial.user_attrs["invalid_config"]
    )


def test_unknown_tuning_folds_are_refused_naming_the_available_ones(synthetic_corpus, tmp_path):
    root, manifest, folds = synthetic_corpus
    with pytest.raises(
        TuningError, match=r"\[7\] are not in the fold table; available folds: \[0, 1, 2, 3\]"
    ):
        TuningObjective(tiny_config(), {}, manifest, folds, [0, 7], root, tmp_path)


# ------------------------------------------------------------------------------ the study driver

LR_SPACE = {"train.lr": {"type": "float", "low": 1e-5, "high": 1e-1, "log": True}}


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_the_driver_retries_a_killed_trial_run_with_its_parameters_before_the_next_round(tmp_path):
    """Trials run elsewhere (the tune flow): a trial left running by a killed run is failed once
    its heartbeat is older than the grace period and queued again with its parameters, which the
    round's runs take first; rounds go on until the budget has finished, and the best trial
    becomes the preset file."""
    settings = StudySettings(
        "ravdess", f"sqlite:///{tmp_path / 'study.db'}", space=LR_SPACE, trials=2, grace_period_s=3
    )
    driver = StudyDriver(settings)
    killed = driver.study.ask()  # the queued base recipe, taken by a run that is then killed
    killed_params = suggest_overrides(killed, driver.recipe.space)
    driver.study._storage.record_heartbeat(killed._trial_id)
    rounds = []

    def runs_elsewhere(missing: int) -> list[str]:  # each run one trial, as a tune-trial flow run does
        rounds.append(missing)
        for _ in range(missing):
            driver.study.optimize(lambda t: suggest_overrides(t, driver.recipe.space)["train.lr"], n_trials=1)
        return []

    driver.run(runs_elsewhere, trials_elsewhere=True)
    states = [t.state.name for t in driver.study.trials]
    assert states == ["FAIL", "COMPLETE", "COMPLETE"] and rounds == [2]
    retry = driver.study.trials[1]
    assert retry.params == {"train.lr": killed_params["train.lr"]} and retried_from(retry) == killed.number
    preset = json.loads(driver.write_best_preset(driver.best_preset_file(tmp_path)).read_text())
    assert (tmp_path / "ser-ravdess-tune-best.json").is_file() and preset["source"]["trial"] == (
        driver.study.best_trial.number
    )


def test_a_round_in_which_no_trial_finished_and_runs_failed_stops_the_study(tmp_path):
    driver = StudyDriver(StudySettings("ravdess", f"sqlite:///{tmp_path / 'study.db'}", space=LR_SPACE))
    with pytest.raises(
        RuntimeError, match="no trial of study ser-ravdess-tune finished in this round: run-1: Crashed"
    ):
        driver.run(lambda missing: ["run-1: Crashed"], trials_elsewhere=True)


# ------------------------------------------------------------------------------ preset files


def test_the_best_trial_becomes_a_preset_file_that_experiment_config_reads(tmp_path):
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial({"train.lr": 2e-3, "eam.mix_prob": 0.25})
    study.enqueue_trial({"train.lr": 5e-4, "eam.mix_prob": 0.75})
    study.optimize(
        lambda t: t.suggest_float("train.lr", 1e-4, 1e-2) * 1000 + t.suggest_float("eam.mix_prob", 0, 1),
        n_trials=2,
    )
    preset = best_preset(study, "cpu-fbank", {"train.epochs": 12}, corpus="ravdess")
    path = write_preset_file(tmp_path / "best.json", preset)
    assert read_preset_file(path) == (
        "cpu-fbank",
        {"train.epochs": 12, "train.lr": 2e-3, "eam.mix_prob": 0.25},
    )
    config = experiment_config("ravdess", str(path), overrides={"train.seed": 3})
    reference = experiment_config(
        "ravdess",
        "cpu-fbank",
        overrides={"train.epochs": 12, "train.lr": 2e-3, "eam.mix_prob": 0.25, "train.seed": 3},
    )
    assert config == reference
    assert preset["source"]["trial"] == 0 and preset["source"]["value"] == pytest.approx(2.25)


def test_a_list_choice_is_stored_as_json_text_and_comes_back_as_the_list(tmp_path):
    base = experiment_config("ravdess", "cpu-fbank")
    space = parse_search_space(
        {"train.speed_factors": {"type": "categorical", "choices": [[], [0.9, 1.0, 1.1]]}}, base
    )
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    assert enqueue_base(study, space, base) == {"train.speed_factors": []}
    seen = []

    def objective(trial):
        overrides = suggest_overrides(trial, space)
        seen.append(overrides["train.speed_factors"])
        return len(base.with_overrides(overrides).train.speed_factors)

    study.optimize(objective, n_trials=8)
    assert seen[0] == [] and [0.9, 1.0, 1.1] in seen and all(v in ([], [0.9, 1.0, 1.1]) for v in seen)
    assert {t.params["train.speed_factors"] for t in study.trials} == {"[]", "[0.9, 1.0, 1.1]"}
    preset = best_preset(study, "cpu-fbank", corpus="ravdess")
    assert preset["settings"] == {"train.speed_factors": [0.9, 1.0, 1.1]}
    path = write_preset_file(tmp_path / "best.json", preset)
    assert experiment_config("ravdess", str(path)).train.speed_factors == (0.9, 1.0, 1.1)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json", "cannot read it as JSON"),
        (json.dumps({"extends": "cpu-fbank", "settings": {}}), '"format": "ser-preset"'),
        (
            json.dumps({"format": "ser-preset", "version": 9, "extends": "cpu-fbank", "settings": {}}),
            "version 9",
        ),
        (
            json.dumps({"format": "ser-preset", "version": 1, "extends": "gpu-magic", "settings": {}}),
            "'gpu-magic'",
        ),
        (
            json.dumps(
                {"format": "ser-preset", "version": 1, "extends": "cpu-fbank", "settings": {"train.nope": 1}}
            ),
            "train.nope",
        ),
    ],
)
def test_a_bad_preset_file_is_refused_naming_the_file(tmp_path, content, message):
    path = tmp_path / "preset.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        experiment_config("ravdess", str(path))
    with pytest.raises(ConfigError, match="preset file"):
        experiment_config("ravdess", str(tmp_path / "missing.json"))


# ------------------------------------------------------------------------------ weight averaging


def test_the_weight_average_follows_the_formula_and_swaps_back_exactly():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    average = WeightAverage(model, decay=0.9)
    reference = {
        k: v.detach().clone().double() for k, v in model.state_dict().items() if v.dtype.is_floating_point
    }
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
    for t in range(12):
        model.train()
        loss = model(torch.randn(8, 3)).pow(2).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        average.update()
        d = min(0.9, (1 + t) / (10 + t))
        assert ema_decay_at(0.9, t) == pytest.approx(d)
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                reference[k] = d * reference[k] + (1 - d) * v.double()
    own = {k: v.clone() for k, v in model.state_dict().items()}
    with average.swapped_in():
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                torch.testing.assert_close(v.double(), reference[k], rtol=1e-5, atol=1e-6)
            else:
                assert torch.equal(v, own[k]), "integer buffers are copied, not averaged"
    for k, v in model.state_dict().items():
        assert torch.equal(v, own[k]), f"{k}: the model's own weights come back"
    restored = WeightAverage(model, decay=0.5)
    restored.load_state_dict(average.state_dict())
    assert restored.updates == 12 and restored.decay == 0.9
    assert all(torch.equal(restored.shadow[k], average.shadow[k]) for k in average.shadow)


def test_ema_decay_is_validated():
    with pytest.raises(ConfigError, match="ema_decay"):
        tiny_config(ema_decay=1.0)
    assert math.isclose(tiny_config(ema_decay=0.99).train.ema_decay, 0.99)
