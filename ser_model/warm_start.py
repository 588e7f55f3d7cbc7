"""Start a training from another model's weights (`ser train --init`, the train flows' ``init``).

A model's parameters fall into four parts (:data:`PARTS`): the backbone, FLAM (frame attention and
attentive pooling), the head (embedding layer, its norm, the classifier) and the loss parameters
(class centers, SupCon projection). `warm_start` copies into a freshly built model

* the backbone and FLAM, always: the source's backbone recipe (every ``ModelConfig`` field but the
  head's and the training-time dropouts and masks, :func:`recipe_differences`) must equal the
  run's, else ConfigError naming each key that differs;
* the head and the loss parameters when the classes match (the same labels in the same order, so
  logit k means the same class) and the head's recipe (``embed_dim``, ``embed_norm``) is the same;
  otherwise they keep their fresh initialisation, a new head for the new labels.

The source is a ``save_pretrained`` folder; of an ensemble (``ser_model.ensemble``) its first member
(averaging independently trained weights would not give a model). What was copied is returned as
the run's ``init`` record (``result.json``), with the source's labels:

    {"source": "models:/ser-ravdess/7", "member": null, "copied": ["backbone", "flam"],
     "head": "new", "head_reason": "...", "source_labels": [...]}
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ser_model.config import ModelConfig
from ser_model.config_validation import ConfigError
from ser_model.ensemble import ENSEMBLE_FILE, SEREnsemble
from ser_model.model import SERModel

__all__ = ["PARTS", "InitModel", "warm_start", "read_init_model", "recipe_differences", "parameter_part"]

PARTS: dict[str, tuple[str, ...]] = {
    "backbone": ("backbone.",),
    "flam": ("frame_attention.", "pooling."),
    "head": ("embed.", "embed_norm.", "classifier."),
    "loss": ("centers", "supcon_proj."),
}
"""Each part of a model and the prefixes of its ``state_dict`` keys."""
ALWAYS_COPIED = ("backbone", "flam")
"""Parts copied whatever the labels; the others only when the classes and head recipe match."""
HEAD_FIELDS = ("embed_dim", "embed_norm")
"""``ModelConfig`` fields that shape the head: compared before the head is copied."""
TRAINING_ONLY_FIELDS = (
    "flam_dropout",
    "head_dropout",
    "fbank_dropout",
    "spec_time_masks",
    "spec_time_width",
    "spec_freq_masks",
    "spec_freq_width",
)
"""``ModelConfig`` fields that act in training only (dropout, SpecAugment masks): free to differ."""


@dataclass(frozen=True)
class InitModel:
    """A model to start from: its local ``folder`` and the ``source`` the user named (a
    ``models:/`` URI or the path itself), which the record keeps."""

    folder: Path
    source: str

    @classmethod
    def local(cls, folder: str | os.PathLike) -> InitModel:
        """A model folder named by its path."""
        return cls(Path(folder), str(folder))


def parameter_part(key: str) -> str:
    """The part (:data:`PARTS`) a ``state_dict`` key belongs to; ValueError for a key of none."""
    for part, prefixes in PARTS.items():
        if any(key == prefix or key.startswith(prefix) for prefix in prefixes):
            return part
    raise ValueError(f"state_dict key {key!r} belongs to no part of ser_model.warm_start.PARTS")


def recipe_differences(source: ModelConfig, run: ModelConfig, fields: tuple[str, ...]) -> dict[str, Any]:
    """``{field: (source value, run value)}`` of the ``fields`` of two model configs that differ."""
    return {
        name: (getattr(source, name), getattr(run, name))
        for name in fields
        if getattr(source, name) != getattr(run, name)
    }


def backbone_recipe_fields() -> tuple[str, ...]:
    """The ``ModelConfig`` fields that define what the backbone and FLAM compute: all but the head's
    and the training-only ones."""
    skipped = set(HEAD_FIELDS) | set(TRAINING_ONLY_FIELDS)
    return tuple(f.name for f in dataclasses.fields(ModelConfig) if f.name not in skipped)


def read_init_model(init: InitModel) -> tuple[SERModel, str | None]:
    """The source model on the CPU and, for an ensemble, the member taken (its first). A folder that
    is no model folder raises ConfigError naming it."""
    folder = init.folder
    try:
        if (folder / ENSEMBLE_FILE).is_file():
            ensemble = SEREnsemble.from_pretrained(folder)
            return ensemble.members[0], "member-0"
        return SERModel.from_pretrained(folder), None
    except (OSError, ValueError) as err:
        raise ConfigError(f"init {init.source}: cannot load a model from {folder}: {err}") from err


def head_reason(source: SERModel, model: SERModel) -> str | None:
    """Why the head cannot be copied from ``source`` into ``model`` (None when it can)."""
    if source.labels != model.labels:
        return f"the classes differ: the source has {list(source.labels)}, the run {list(model.labels)}"
    differ = recipe_differences(source.config.model, model.config.model, HEAD_FIELDS)
    if differ:
        return f"the head's recipe differs: {format_differences(differ)}"
    return None


def format_differences(differ: dict[str, Any]) -> str:
    """'model.fbank_dim: source 64, run 128; …'."""
    return "; ".join(f"model.{name}: source {a!r}, run {b!r}" for name, (a, b) in differ.items())


@torch.no_grad()
def warm_start(model: SERModel, init: InitModel) -> dict[str, Any]:
    """Copy the parts of the model at ``init`` into ``model`` (module docstring) and return the
    ``init`` record. ConfigError when the source cannot be loaded or its backbone recipe differs."""
    source, member = read_init_model(init)
    differ = recipe_differences(source.config.model, model.config.model, backbone_recipe_fields())
    if differ:
        raise ConfigError(
            f"init {init.source}: its backbone recipe differs from this run's ({format_differences(differ)}); "
            "start from a model of the same backbone recipe, or train from scratch"
        )
    reason = head_reason(source, model)
    parts = ALWAYS_COPIED if reason else tuple(PARTS)
    source_state = source.state_dict()
    fresh = []
    for key, value in model.state_dict().items():
        if parameter_part(key) not in parts:
            continue
        if key not in source_state:  # a loss parameter the source's recipe did not train
            fresh.append(key)
            continue
        if source_state[key].shape != value.shape:
            raise ConfigError(
                f"init {init.source}: {key} has shape {tuple(source_state[key].shape)} there and "
                f"{tuple(value.shape)} in this run's model"
            )
        value.copy_(source_state[key])
    return {
        "source": init.source,
        "member": member,
        "copied": [part for part in parts if part in ALWAYS_COPIED or any_key(model, part)],
        "head": "new" if reason else "copied",
        "head_reason": reason,
        "kept_fresh": fresh,
        "source_labels": list(source.labels),
    }


def any_key(model: SERModel, part: str) -> bool:
    """Whether ``model`` has any parameter or buffer in ``part``."""
    return any(parameter_part(key) == part for key in model.state_dict())
