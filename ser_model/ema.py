"""Exponential moving average of a model's weights (``TrainConfig.ema_decay``; ours, not in the paper).

After every optimiser update the average follows the trained weights,

    θ̄ ← d_t · θ̄ + (1 − d_t) · θ,    d_t = min(d, (1 + t) / (10 + t)),

where t counts the updates since the average started (the warm-up of d_t keeps the first updates
from being dominated by the random initial weights). Floating-point buffers (BatchNorm running
statistics) are averaged the same way; integer buffers (BatchNorm's update counter) are copied.
Validation, checkpoint selection and the saved ``best`` model use the averaged weights: on a small
corpus the epoch-to-epoch swings of validation UA come largely from the last few noisy updates, and
the average smooths them (the release model's stability across seeds is what it is for).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

__all__ = ["WeightAverage", "ema_decay_at"]


def ema_decay_at(decay: float, updates: int) -> float:
    """d_t = min(d, (1 + t) / (10 + t)) for t = ``updates`` already averaged."""
    return min(decay, (1.0 + updates) / (10.0 + updates))


class WeightAverage:
    """The moving average of ``model``'s parameters and buffers (module docstring).

    ``update()`` after each optimiser step; ``swapped_in()`` is a context in which the model holds
    the averaged weights (its own are put back on exit); ``state_dict``/``load_state_dict`` for
    exact resume.
    """

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema decay must lie in (0, 1), got {decay}")
        self.model, self.decay, self.updates = model, decay, 0
        self.shadow = {name: value.detach().clone() for name, value in self._tensors()}

    def _tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        yield from self.model.named_parameters()
        yield from self.model.named_buffers()

    @torch.no_grad()
    def update(self) -> None:
        """One step of the average towards the model's current weights."""
        d = ema_decay_at(self.decay, self.updates)
        for name, value in self._tensors():
            shadow = self.shadow[name]
            if value.dtype.is_floating_point:
                shadow.mul_(d).add_(value.detach(), alpha=1.0 - d)
            else:
                shadow.copy_(value)
        self.updates += 1

    @contextmanager
    def swapped_in(self) -> Iterator[nn.Module]:
        """The model with the averaged weights inside the block, its own weights after."""
        own = {name: value.detach().clone() for name, value in self._tensors()}
        self._copy_into_model(self.shadow)
        try:
            yield self.model
        finally:
            self._copy_into_model(own)

    @torch.no_grad()
    def _copy_into_model(self, values: dict[str, torch.Tensor]) -> None:
        for name, value in self._tensors():
            value.copy_(values[name])

    def state_dict(self) -> dict[str, Any]:
        return {
            "decay": self.decay,
            "updates": self.updates,
            "shadow": {k: v.cpu() for k, v in self.shadow.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.decay, self.updates = float(state["decay"]), int(state["updates"])
        for name, value in state["shadow"].items():
            self.shadow[name].copy_(value)
