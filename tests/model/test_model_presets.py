"""The presets built on cpu-fbank (`demo`, `pipeline-check`) are cpu-fbank but for what they are for,
and infra/demo selects its recipe by name instead of holding its numbers."""

from __future__ import annotations

import re
from pathlib import Path

from ser_model.model import SERModel
from ser_model.presets import DEFAULT_PRESET, PRESETS, experiment_config

DEMO_SCRIPT = Path(__file__).resolve().parents[2] / "infra" / "demo"


def changed_keys(base, other) -> set[str]:
    """The override keys whose values differ between two configs."""
    return {key for key in base.override_keys() if base.value(key) != other.value(key)}


def test_the_demo_is_cpu_fbank_on_a_shorter_schedule_with_a_release_of_one_model():
    cpu, demo = experiment_config("ravdess", "cpu-fbank"), experiment_config("ravdess", "demo")
    assert changed_keys(cpu, demo) == {"train.epochs", "train.release_seeds"}
    assert demo.train.epochs < cpu.train.epochs
    assert demo.train.release_seeds == 1 < cpu.train.release_seeds
    assert (
        not demo.train.release_holdout
    )  # one model on every speaker, its last epoch, as cpu-fbank's members


def test_the_pipeline_check_is_cpu_fbank_with_a_smaller_model_and_a_shorter_schedule():
    cpu, check = experiment_config("ravdess", "cpu-fbank"), experiment_config("ravdess", "pipeline-check")
    changed = changed_keys(cpu, check)
    assert changed and all(key.startswith(("model.fbank_", "loss.supcon_proj", "train.")) for key in changed)
    assert check.train.epochs < cpu.train.epochs and check.train.max_seconds < cpu.train.max_seconds

    def n_parameters(config) -> int:
        return sum(p.numel() for p in SERModel(config).parameters())

    assert n_parameters(check) < n_parameters(cpu) / 2


def test_infra_demo_selects_a_shipped_preset_by_name_and_holds_no_recipe_numbers():
    script = DEMO_SCRIPT.read_text(encoding="utf-8")
    defaults = dict(re.findall(r"^(preset|epochs|release_seeds)=(\S*)", script, flags=re.M))
    assert defaults["preset"] == "demo" and defaults["preset"] in PRESETS
    assert defaults["epochs"] == '""' and defaults["release_seeds"] == '""'  # the preset's, unless given


def test_the_default_preset_is_a_shipped_one():
    assert DEFAULT_PRESET in PRESETS
