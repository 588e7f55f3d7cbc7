"""Search spaces as data: the dimensions an Optuna study samples, each a key of ``SERConfig``.

A search space is a JSON object ``{config key: spec}`` with spec one of

    {"type": "float", "low": 3e-4, "high": 3e-3, "log": true}
    {"type": "int", "low": 10, "high": 40, "step": 5}
    {"type": "categorical", "choices": [true, false]}
    {"type": "categorical", "choices": [[], [0.9, 1.0, 1.1]]}
    {"type": "float", "low": 0.0, "high": 1.0, "when": {"eam.enabled": true}}

(a list choice is a list value, e.g. ``train.speed_factors``; Optuna records it as its JSON text,
:func:`encode_choice`, and the preset file gets the list back), and every key must be a
``SERConfig.with_overrides`` key. ``when`` makes a dimension conditional: it is sampled only in
trials whose values of the named categorical dimensions are the given ones, and is absent
from the other trials' parameters (their config keeps the base value), so a knob that acts only
when a component is on is neither searched nor credited in the importances where it is off.
Spaces that ship with the project are in :data:`SEARCH_SPACES`, one per preset (beside
ser_model/presets.py).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from ser_model.config import SERConfig
from ser_model.config_validation import ConfigError

SEARCH_SPACES: dict[str, dict[str, dict[str, Any]]] = {
    # The method's knobs and the optimiser's, around the cpu-fbank recipe: EAM (how often, how loud
    # the partner, when a segment counts as silent), each of MLL's extra terms and its weight,
    # regularisation, the learning rate. The preset's base (EAM and the three terms off) is inside
    # the space, and so is the paper's method; a component's knobs are sampled only in trials that
    # turn it on ("when").
    "cpu-fbank": {
        "train.lr": {"type": "float", "low": 3e-4, "high": 3e-3, "log": True},
        "eam.enabled": {"type": "categorical", "choices": [False, True]},
        "eam.mix_prob": {"type": "float", "low": 0.0, "high": 1.0, "when": {"eam.enabled": True}},
        "eam.snr_db_low": {"type": "float", "low": -5.0, "high": 5.0, "when": {"eam.enabled": True}},
        "eam.degenerate_db": {"type": "float", "low": -40.0, "high": -10.0, "when": {"eam.enabled": True}},
        "loss.focal": {"type": "categorical", "choices": [False, True]},
        "loss.w_focal": {"type": "float", "low": 0.1, "high": 2.0, "when": {"loss.focal": True}},
        "loss.center": {"type": "categorical", "choices": [False, True]},
        "loss.w_center": {
            "type": "float",
            "low": 1e-3,
            "high": 0.1,
            "log": True,
            "when": {"loss.center": True},
        },
        "loss.supcon": {"type": "categorical", "choices": [False, True]},
        "loss.w_supcon": {
            "type": "float",
            "low": 0.01,
            "high": 1.0,
            "log": True,
            "when": {"loss.supcon": True},
        },
        "model.fbank_dropout": {"type": "float", "low": 0.0, "high": 0.3},
        "train.ema_decay": {"type": "categorical", "choices": [None, 0.98, 0.995]},
        "train.speed_factors": {"type": "categorical", "choices": [[], [0.9, 1.0, 1.1]]},
    },
    # The paper's recipe on a GPU: the learning rates, EAM and the loss weights.
    "paper-wavlm": {
        "train.lr": {"type": "float", "low": 3e-5, "high": 3e-4, "log": True},
        "eam.mix_prob": {"type": "float", "low": 0.0, "high": 1.0},
        "eam.snr_db_low": {"type": "float", "low": -5.0, "high": 5.0},
        "loss.w_focal": {"type": "float", "low": 0.0, "high": 2.0},
        "loss.w_center": {"type": "float", "low": 1e-3, "high": 0.1, "log": True},
        "loss.w_supcon": {"type": "float", "low": 0.01, "high": 1.0, "log": True},
    },
}


class TuningError(ConfigError):
    """A search space, a study or a preset file is not usable; the message says what and where."""


@dataclass(frozen=True)
class ParamSpec:
    """One dimension of a search space (module docstring)."""

    key: str
    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()
    when: tuple[tuple[str, Any], ...] = ()
    """(key, value) pairs of categorical dimensions of the space: sampled only where all of them hold."""

    def active(self, values: Mapping[str, Any]) -> bool:
        """Whether this dimension is sampled given the values of the dimensions before it."""
        return all(key in values and values[key] == value for key, value in self.when)

    def suggest(self, trial: optuna.Trial) -> Any:
        """The trial's value of this dimension (recorded by Optuna under the config key)."""
        if self.type == "float":
            return trial.suggest_float(self.key, self.low, self.high, log=self.log, step=self.step)
        if self.type == "int":
            return trial.suggest_int(
                self.key, int(self.low), int(self.high), log=self.log, step=int(self.step or 1)
            )
        return decode_choice(trial.suggest_categorical(self.key, [encode_choice(c) for c in self.choices]))

    def to_dict(self) -> dict[str, Any]:
        if self.type == "categorical":
            spec: dict[str, Any] = {"type": self.type, "choices": list(self.choices)}
        else:
            spec = {"type": self.type, "low": self.low, "high": self.high}
            if self.log:
                spec["log"] = True
            if self.step is not None:
                spec["step"] = self.step
        if self.when:
            spec["when"] = dict(self.when)
        return spec


def encode_choice(value: Any) -> Any:
    """A categorical choice as Optuna stores it: a list (or tuple) as its JSON text, others as they are
    (Optuna's choices are None, bool, int, float or str)."""
    return json.dumps(list(value)) if isinstance(value, (list, tuple)) else value


def decode_choice(value: Any) -> Any:
    """The inverse of :func:`encode_choice`: the JSON text of a list back to the list."""
    return json.loads(value) if isinstance(value, str) and value.startswith("[") else value


_FIELDS = {
    "float": {"type", "low", "high", "log", "step", "when"},
    "int": {"type", "low", "high", "log", "step", "when"},
    "categorical": {"type", "choices", "when"},
}
"""The fields each type of dimension takes."""


def _param(key: str, spec: Any, where: str) -> ParamSpec:
    at = f"{where}: {key!r}"
    if not isinstance(spec, Mapping):
        raise TuningError(
            f'{at}: expected an object like {{"type": "float", "low": 0.0, "high": 1.0}}, got {spec!r}'
        )
    kind = spec.get("type")
    if kind not in _FIELDS:
        raise TuningError(f"{at}: type {kind!r}, expected one of {sorted(_FIELDS)}")
    unknown = sorted(set(spec) - _FIELDS[kind])
    if unknown:
        raise TuningError(
            f"{at}: unknown field(s) {unknown} for type {kind!r}; expected {sorted(_FIELDS[kind])}"
        )
    when = _condition(spec, at)
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise TuningError(f"{at}: 'choices' must be a non-empty list, got {choices!r}")
        return ParamSpec(key, kind, choices=tuple(choices), when=when)
    return _numeric_param(key, kind, spec, at, when)


def _condition(spec: Mapping[str, Any], at: str) -> tuple[tuple[str, Any], ...]:
    """A dimension's ``when`` as (key, value) pairs; () when absent (unconditional)."""
    if "when" not in spec:
        return ()
    condition = spec["when"]
    if not isinstance(condition, Mapping) or not condition:
        raise TuningError(
            f'{at}: "when" must be a non-empty object {{categorical key: value}}, got {condition!r}'
        )
    return tuple(condition.items())


def _numeric_param(
    key: str, kind: str, spec: Mapping[str, Any], at: str, when: tuple[tuple[str, Any], ...]
) -> ParamSpec:
    """A float or int dimension: numbers low < high (whole for int), log scale only above 0, a positive step."""
    low, high = spec.get("low"), spec.get("high")
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high))
    if not numbers or not low < high:
        raise TuningError(f"{at}: expected numbers low < high, got low={low!r} high={high!r}")
    if kind == "int" and not (float(low).is_integer() and float(high).is_integer()):
        raise TuningError(f"{at}: an int dimension needs whole low and high, got {low!r}, {high!r}")
    log_scale = bool(spec.get("log", False))
    if log_scale and low <= 0:
        raise TuningError(f"{at}: a log-scale dimension needs low > 0, got {low!r}")
    step = spec.get("step")
    if step is not None and (log_scale or not isinstance(step, (int, float)) or step <= 0):
        raise TuningError(
            f"{at}: step must be a positive number and cannot be combined with log, got {step!r}"
        )
    return ParamSpec(key, kind, float(low), float(high), log_scale, step, when=when)


def parse_search_space(
    data: Any, base: SERConfig | None = None, where: str = "search space"
) -> dict[str, ParamSpec]:
    """A search space's JSON object → {key: ParamSpec}; with ``base``, every key must be an override
    key of that config, and the space's corner values must give valid configs (each dimension at its
    low and at its high end, the others at the base's values). Raises TuningError naming the key."""
    if not isinstance(data, Mapping) or not data:
        raise TuningError(
            f"{where}: expected a non-empty JSON object {{config key: spec}}, got {type(data).__name__}"
        )
    space = {key: _param(key, spec, where) for key, spec in data.items()}
    space = _order_by_conditions(space, where)
    if base is not None:
        valid = set(base.override_keys())
        unknown = sorted(set(space) - valid)
        if unknown:
            raise TuningError(
                f"{where}: {unknown} are not config keys; expected keys like {sorted(valid)[:6]} ..."
            )
        for p in space.values():
            for value in p.choices if p.type == "categorical" else (p.low, p.high):
                try:
                    base.with_overrides({**dict(p.when), p.key: int(value) if p.type == "int" else value})
                except ConfigError as err:
                    raise TuningError(f"{where}: {p.key}={value!r} makes an invalid config: {err}") from err
    return space


def _order_by_conditions(space: Mapping[str, ParamSpec], where: str) -> dict[str, ParamSpec]:
    """The space with every conditional dimension after the dimensions its ``when`` names (otherwise
    in the given order), so that a condition is known when its dimension is reached. Each ``when``
    must name a categorical dimension of the space with one of its choices; cycles are refused."""
    for key, p in space.items():
        for on, value in p.when:
            other = space.get(on)
            if other is None or other.type != "categorical" or on == key:
                raise TuningError(
                    f"{where}: {key!r} is conditional on {on!r}, which must be another categorical "
                    f"dimension of the space; its categorical dimensions: "
                    f"{sorted(k for k, q in space.items() if q.type == 'categorical' and k != key)}"
                )
            if value not in other.choices:
                raise TuningError(
                    f"{where}: {key!r} is conditional on {on}={value!r}, not one of its choices {list(other.choices)}"
                )
    ordered: dict[str, ParamSpec] = {}
    while len(ordered) < len(space):
        ready = [k for k, p in space.items() if k not in ordered and all(on in ordered for on, _ in p.when)]
        if not ready:
            raise TuningError(
                f"{where}: the conditions of {sorted(set(space) - set(ordered))} depend on each other in a cycle"
            )
        ordered[ready[0]] = space[ready[0]]  # one at a time: the given order wherever the conditions allow
    return ordered


def search_space(name: str) -> dict[str, ParamSpec]:
    """The search space shipped for preset ``name`` (:data:`SEARCH_SPACES`)."""
    if name not in SEARCH_SPACES:
        raise TuningError(
            f"search space: got {name!r}, expected one of {sorted(SEARCH_SPACES)} or a JSON file"
        )
    return parse_search_space(SEARCH_SPACES[name], where=f"SEARCH_SPACES[{name!r}]")


def load_search_space(
    source: str | os.PathLike | Mapping[str, Any], base: SERConfig | None = None
) -> dict[str, ParamSpec]:
    """A space by name (:data:`SEARCH_SPACES`), from a JSON file, or from an already parsed object."""
    if isinstance(source, Mapping):
        return parse_search_space(source, base)
    text = str(source)
    if text in SEARCH_SPACES:
        return parse_search_space(SEARCH_SPACES[text], base, where=f"search space {text!r}")
    path = Path(text)
    if not path.is_file():
        raise TuningError(
            f"search space {text!r}: neither a shipped space ({sorted(SEARCH_SPACES)}) nor a JSON file"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise TuningError(f"{path}: cannot read the search space as JSON ({err})") from err
    return parse_search_space(data, base, where=str(path))


def suggest_overrides(trial: optuna.Trial, space: Mapping[str, ParamSpec]) -> dict[str, Any]:
    """{config key: value} of this trial, one suggestion per active dimension, in the space's order
    (a conditional dimension whose ``when`` does not hold is left out: the config keeps its base value)."""
    values: dict[str, Any] = {}
    for key, p in space.items():
        if p.active(values):
            values[key] = p.suggest(trial)
    return values


def space_dict(space: Mapping[str, ParamSpec]) -> dict[str, Any]:
    """A parsed space back to its JSON object (a flow parameter, an MLflow param)."""
    return {key: p.to_dict() for key, p in space.items()}
