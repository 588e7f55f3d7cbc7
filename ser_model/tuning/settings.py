"""What a study is: its name and storage, the recipe its trials start from, and its budget.

Every default of a study is a default of :class:`StudySettings`: ``ser tune``'s flags and the
tune flow's parameters read them from here. This module imports no optuna (the CLI's parser
reads the defaults for ``ser --help``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ser_model.presets import DEFAULT_PRESET
from ser_stack.names import study_name


@dataclass(frozen=True)
class StudySettings:
    """One tuning study of ``corpus``.

    name: the Optuna study ("" gives ``ser-<corpus>-tune``); storage: its RDB storage URL.
    preset: the recipe every trial starts from (a preset name or a preset file); space: the search
    space (a shipped space's name, a JSON file, a JSON object; None: the preset's); epochs and
    overrides: fixed settings of every trial (``overrides`` win over ``epochs``).
    trials: finished (complete or pruned) trials to reach; folds: the folds each trial trains,
    whose mean best validation UA is its value; grace_period_s: a running trial without a
    heartbeat for this long was killed and is retried with its parameters; seed: the samplers'
    seed, mixed with each process's id.
    """

    corpus: str
    storage: str
    name: str = ""
    preset: str = DEFAULT_PRESET
    space: str | Mapping[str, Any] | None = None
    epochs: int | None = None
    overrides: Mapping[str, Any] = field(default_factory=dict)
    trials: int = 20
    folds: tuple[int, ...] = (0, 1)
    grace_period_s: float = 120
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", self.name or study_name(self.corpus))
        object.__setattr__(self, "folds", tuple(sorted({int(k) for k in self.folds})))

    def fixed_settings(self) -> dict[str, Any]:
        """The settings every trial shares on top of the preset: ``train.epochs``, then the overrides."""
        return {**({"train.epochs": self.epochs} if self.epochs is not None else {}), **self.overrides}
