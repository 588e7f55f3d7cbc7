"""Named training recipes ("presets"): each recipe, as data, in one place.

    experiment_config("ravdess", preset="cpu-fbank", overrides={"train.epochs": 5}) → SERConfig

A preset is a dict of `SERConfig.with_overrides` keys applied on top of the dataclass defaults (the
paper's recipe, ser_model/config.py), holding only what differs from them; the
corpus supplies the labels, and user overrides (`ser train --set`, the flows' `overrides`) go on top of
the preset. The CLI (`ser train --preset`), the train flows (`preset` parameter), `infra/demo`, the
e2e tests and the benchmarks all select recipes by name through `experiment_config`; the default
is :data:`DEFAULT_PRESET`.

* ``cpu-fbank`` (ours; the default): the zero-download recipe for a CPU: the fbank backbone's 2-D
  CNN (4 blocks, 32-64-128-128 channels) over the per-bin normalised log-mel → 128-d frames → FLAM
  → BatchNorm'd embedding; silence trimmed at 40 dB; cross-entropy and the KL term (EAM and MLL's
  other terms off); Adam lr 1e-3 with one epoch of warm-up then a cosine; 25 epochs of 3 s crops;
  the release model an ensemble of two such models trained on every speaker. Its numbers were
  chosen on RAVDESS's validation actors; which parts are on, and the release, follow the paired
  ablation grid over the 5 folds × 2 seeds (docs/RESULTS.md §3c), where a part that does not beat
  its ablation is turned off.
* ``paper-wavlm``: the paper's recipe: WavLM-Large fine-tuned (CNN feature encoder frozen) with a
  weighted layer sum, FLAM with 16 heads, the published head, EAM on every sample at SNR U[−5, 10] dB,
  Adam lr 1e-4 (centers 5e-3) × 7/8 per epoch, batch 16, 20 epochs. Needs the WavLM weights: a hub
  id, or a local folder with `--backbone hf:/path` (no download happens in tests).
* ``demo``: ``infra/demo``'s default: ``cpu-fbank`` with 12 epochs and a release of one model.
* ``pipeline-check``: ``cpu-fbank`` with a small model and 2 epochs, for checks of the pipeline
  (the e2e tests, benchmarks/stack_load.py), not of accuracy.

A preset can also be a *preset file* (``ser tune`` writes one for its best trial): a JSON object

    {"format": "ser-preset", "version": 1, "extends": "cpu-fbank", "settings": {"train.lr": 0.0012, ...},
     "source": {"study": ..., "trial": ..., "value": ...}}

whose settings go on top of the preset it extends. Wherever a preset name is accepted (``ser train
--preset``, the train flows' ``preset`` parameter, ``infra/demo --preset``), a path to such a file
is accepted too.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ser_model.config import SERConfig
from ser_model.config_validation import ConfigError
from ser_stack.files import write_atomically

__all__ = [
    "PRESETS",
    "DEFAULT_PRESET",
    "PRESET_FILE_FORMAT",
    "PRESET_FILE_VERSION",
    "preset_for_backbone",
    "preset_settings",
    "read_preset_file",
    "write_preset_file",
    "split_preset",
    "experiment_config",
]

_CPU_FBANK: dict[str, Any] = {
    "model.trim_db": 40.0,
    "model.embed_norm": "batch",
    "eam.enabled": False,
    "eam.mix_prob": 0.5,
    "eam.snr_db_low": 0.0,
    "loss.focal": False,
    "loss.center": False,
    "loss.supcon": False,
    "train.epochs": 25,
    "train.lr": 1e-3,
    "train.schedule": "cosine",
    "train.warmup_epochs": 1.0,
    "train.max_seconds": 3.0,
    "train.release_holdout": False,
    "train.release_seeds": 2,
    # scores are the same at any evaluation batch size (eval mode is padding-invariant); 4 whole
    # utterances at a time keep a fold's peak RSS at 1.42 GB where 16 took 1.55-1.66 GB (docs/RESULTS.md §12)
    "train.eval_batch_size": 4,
}
"""The ``cpu-fbank`` recipe, which ``demo`` and ``pipeline-check`` build on (:data:`PRESETS`)."""

PRESETS: dict[str, dict[str, Any]] = {
    # The zero-download recipe for a CPU (ours), and the default (DEFAULT_PRESET): what a user
    # trains and what the accuracy benchmarks measure.
    "cpu-fbank": _CPU_FBANK,
    # The paper's recipe: the defaults on WavLM-Large (needs its weights).
    "paper-wavlm": {
        "model.backbone": "hf:microsoft/wavlm-large",
    },
    # What infra/demo trains unless told otherwise: cpu-fbank on a schedule short enough for a
    # first run on 2 cores, 12 epochs, and a release of one model (release_seeds back to its
    # default, 1) instead of the ensemble of two, which would double the release's time.
    "demo": {
        **{key: value for key, value in _CPU_FBANK.items() if key != "train.release_seeds"},
        "train.epochs": 12,
    },
    # A check of the pipeline rather than of accuracy (the e2e tests, the stack's load benchmark):
    # cpu-fbank with a small model and a 2-epoch schedule, a few seconds a fold.
    "pipeline-check": {
        **_CPU_FBANK,
        "train.epochs": 2,
        "train.max_seconds": 2.0,
        "train.batch_size": 8,
        "model.fbank_channels": [8, 16, 32, 32],
        "model.fbank_dim": 64,
        "model.fbank_layers": 1,
        "model.fbank_heads": 2,
        "loss.supcon_proj_dim": 32,
    },
}
"""Each recipe as its differences from the ``SERConfig`` defaults (which are the paper's recipe with
the fbank backbone), so that every number lives in one place: ``paper-wavlm`` is the defaults on
WavLM-Large; ``cpu-fbank`` keeps the defaults' fbank CNN, FLAM (4 heads), KL term, batch size and
gradient clipping, and changes what is listed. Two of the method's three parts are off in
``cpu-fbank``, each because on RAVDESS trained from scratch it did not beat its ablation on unseen
actors: EAM (its probability and SNR range stay set, so ``--set eam.enabled=true`` turns it back
on) and MLL's focal, center and SupCon terms (their weights stay the defaults', so ``--set
loss.focal=true --set loss.center=true --set loss.supcon=true`` trains the full multi-loss). Both
stay dimensions of the preset's search space (``ser_model.tuning``), so a study on another corpus
can turn them on. Its release model (``--fold -1``) is an ensemble of two models trained on every
speaker for the fixed schedule, chosen on the paired grid; ``--set train.release_seeds=1`` trains
one model, and ``--set train.release_holdout=true`` the single model selected on 2 held-out actors.
The figures behind each choice are in docs/RESULTS.md (its scoreboard, §3c)."""

#: the recipe when none is named and the backbone is fbank (or not named)
DEFAULT_PRESET = "cpu-fbank"
PRESET_FILE_FORMAT = "ser-preset"
PRESET_FILE_VERSION = 1


def read_preset_file(path: str | os.PathLike) -> tuple[str, dict[str, Any]]:
    """(name of the preset it extends, its settings) of a preset file; ConfigError naming the file and the problem."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"preset file {path}: cannot read it as JSON ({err})") from err
    if not isinstance(data, dict) or data.get("format") != PRESET_FILE_FORMAT:
        raise ConfigError(
            f'preset file {path}: expected a JSON object with "format": "{PRESET_FILE_FORMAT}" (ser tune writes one)'
        )
    if data.get("version") != PRESET_FILE_VERSION:
        raise ConfigError(
            f"preset file {path}: version {data.get('version')!r}; this code reads version {PRESET_FILE_VERSION}"
        )
    base, settings = data.get("extends"), data.get("settings")
    if base not in PRESETS or not isinstance(settings, dict):
        raise ConfigError(
            f'preset file {path}: expected "extends" naming one of {sorted(PRESETS)} (got {base!r}) '
            f'and "settings", an object of config keys (got {type(settings).__name__})'
        )
    return base, settings


def write_preset_file(path: str | os.PathLike, preset: Mapping[str, Any]) -> Path:
    """Write a preset file (JSON, keys sorted) atomically and return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, json.dumps(dict(preset), indent=2, sort_keys=True) + "\n")
    return path


def is_preset_file(preset: str) -> bool:
    """Whether ``preset`` names a file rather than a shipped preset (a .json path or an existing file)."""
    return preset not in PRESETS and (preset.endswith(".json") or os.path.isfile(preset))


def split_preset(preset: str) -> tuple[str, dict[str, Any]]:
    """(the shipped preset it rests on, its own settings on top): (name, {}) for a shipped preset,
    (extends, settings) for a preset file; ConfigError for anything else."""
    if preset in PRESETS:
        return preset, {}
    if is_preset_file(preset):
        return read_preset_file(preset)
    raise ConfigError(
        f"preset: got {preset!r}, expected one of {sorted(PRESETS)} or a preset file (.json, written by ser tune)"
    )


def preset_settings(preset: str) -> dict[str, Any]:
    """Every setting of a shipped preset or a preset file (the extended preset's, then the file's)."""
    base, own = split_preset(preset)
    return {**PRESETS[base], **own}


def preset_for_backbone(backbone: str | None) -> str:
    """The preset used when none is named: ``paper-wavlm`` for an ``hf:`` backbone, ``cpu-fbank`` otherwise."""
    return "paper-wavlm" if backbone is not None and backbone.startswith("hf:") else DEFAULT_PRESET


def experiment_config(
    corpus: str,
    preset: str | None = None,
    *,
    backbone: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    base: SERConfig | None = None,
) -> SERConfig:
    """The config for "this corpus with this preset and these overrides": the corpus's labels, the
    preset (a name or a preset file; default: ``preset_for_backbone(backbone)``), then ``backbone``,
    then ``overrides``.

    ``base``: start from this config (e.g. a ``--config`` file) instead of the preset. Raises
    ``UnknownCorpusError`` for an unknown corpus, ``ConfigError`` for an unknown preset, a bad
    override, or a base whose labels are not the corpus's.
    """
    from data_contracts.corpora import check_corpus
    from data_contracts.labels import LABELS

    check_corpus(corpus)
    if base is None:
        settings = preset_settings(preset or preset_for_backbone(backbone))
        config = SERConfig(labels=LABELS[corpus], corpus=corpus).with_overrides(settings)
    else:
        if preset is not None:
            raise ConfigError("give either a preset or a base config (--config), not both")
        config = base.with_overrides({"corpus": corpus})
    changes: dict[str, Any] = {}
    if backbone:
        changes["model.backbone"] = backbone
    changes.update(overrides or {})
    config = config.with_overrides(changes)
    if tuple(config.labels) != LABELS[corpus]:
        raise ConfigError(
            f"SERConfig.labels: {list(config.labels)} do not match {corpus}'s classes {list(LABELS[corpus])}"
        )
    return config
