"""How a config class is declared and how its errors read: validated, frozen dataclasses.

:func:`config_dataclass` makes a class a pydantic dataclass with strict types that is frozen and
refuses unknown fields, and turns pydantic's errors into a :class:`ConfigError` in the project's
words: ``"<Class>.<field>: got <value> (<type>), expected <what>"``, or ``"<where>: unknown key(s)
[...]; valid keys: [...]"``. A class's own rules run in its ``__post_init__`` and raise through
:func:`require`. :func:`bounded` declares a number with pydantic's bounds and the words its error
names them in (:data:`PositiveInt`, :data:`Dropout` …); :data:`Ints`, :data:`Names` and
:data:`Floats` are tuple fields that read back the lists of their JSON.

The config classes of an experiment are ``ser_model.config``; ``ser_model.segments`` declares its
own with the same tools. Torch-free, like the configs.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, ConfigDict, Field, ValidationError
from pydantic.dataclasses import dataclass


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field and what is expected."""


def require(condition: bool, where: str, message: str) -> None:
    """ConfigError ``"<where>: <message>"`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(f"{where}: {message}")


def _as_tuple(value: Any) -> Any:
    """A JSON list read back as the tuple the field holds (configs round-trip through JSON)."""
    return tuple(value) if isinstance(value, list) else value


Ints = Annotated[tuple[int, ...], BeforeValidator(_as_tuple)]
Names = Annotated[tuple[str, ...], BeforeValidator(_as_tuple)]
Floats = Annotated[tuple[float, ...], BeforeValidator(_as_tuple)]

_STRICT = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


@dataclasses.dataclass(frozen=True)
class Expect:
    """What a bounded field takes, in the words its error message uses (:func:`bounded`)."""

    words: str


def bounded(base: type, words: str, **limits: float) -> Any:
    """``base`` within pydantic's bounds ``limits`` (``gt``, ``ge``, ``lt``, ``le``); a value outside
    them is refused as ``"<Class>.<field>: got <value>, expected <words>"``."""
    return Annotated[base, Field(**limits), Expect(words)]


PositiveInt = bounded(int, "a positive integer", ge=1)
CountInt = bounded(int, "an integer >= 0", ge=0)
NonNegative = bounded(float, "a value >= 0", ge=0.0)
Dropout = bounded(float, "a dropout probability in [0, 1)", ge=0.0, lt=1.0)
LearningRate = bounded(float, "a learning rate > 0", gt=0.0)


def _expect_words(annotation: Any) -> str | None:
    """The :class:`Expect` words of a bounded annotation (or of a union arm of one), None without."""
    if typing.get_origin(annotation) is Annotated:
        return next((m.words for m in annotation.__metadata__ if isinstance(m, Expect)), None)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        words = [_expect_words(arg) for arg in typing.get_args(annotation)]
        found = next((w for w in words if w), None)
        optional = type(None) in typing.get_args(annotation)
        return None if found is None else f"None or {found}" if optional else found
    return None


def _expected(annotation: Any) -> str:
    """How an error message names what a field takes: ``int``, ``float | None``, ``one of ('a', 'b')``."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _expected(typing.get_args(annotation)[0])
    if origin is Literal:
        return f"one of {typing.get_args(annotation)}"
    if origin is tuple:
        return f"a list of {_expected(typing.get_args(annotation)[0])}"
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_expected(arg) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", str(annotation))


def _config_error(cls: type, where: str, err: ValidationError) -> ConfigError:
    """The first problem pydantic found, as a ConfigError in this module's words."""
    hints = typing.get_type_hints(cls, include_extras=True)
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(str(e["loc"][0]) for e in err.errors() if e["type"] == "unexpected_keyword_argument")
    if unknown:
        return ConfigError(f"{where}: unknown key(s) {unknown}; valid keys: {valid}")
    problem = err.errors()[0]
    cause = problem.get("ctx", {}).get("error")
    if isinstance(cause, ConfigError):  # one of the class's own rules (__post_init__)
        return cause
    loc = problem["loc"]
    if problem["type"].startswith("missing"):
        return ConfigError(f"{cls.__name__}.{loc[0]}: missing; expected {_expected(hints[loc[0]])}")
    if not loc:
        return ConfigError(f"{where}: {problem['msg']}")
    name = f"{cls.__name__}.{loc[0]}" + "".join(f"[{i}]" for i in loc[1:])
    value = problem["input"]
    annotation = hints[loc[0]]
    if len(loc) > 1:  # an item of a tuple field
        annotation = typing.get_args(typing.get_args(annotation)[0])[0]
    expected = _expected(annotation)
    if problem["type"] in _BOUND_ERRORS and len(loc) == 1:
        expected = _expect_words(hints[loc[0]]) or problem["msg"].removeprefix("Input should be ")
    if problem["type"] == "finite_number":
        expected = "a finite number"
    plain = problem["type"] in ("literal_error", "finite_number", *_BOUND_ERRORS)
    got = f"{value!r}" if plain else f"{value!r} ({type(value).__name__})"
    return ConfigError(f"{name}: got {got}, expected {expected}")


_BOUND_ERRORS = ("greater_than", "greater_than_equal", "less_than", "less_than_equal")


def config_dataclass(cls: type | None = None, **options: Any) -> Any:
    """``cls`` as a frozen pydantic dataclass with strict types and no unknown fields, whose errors
    are ``ConfigError`` (``"<Class>.<field>: got <value> (<type>), expected <type>"``; the class's
    ``__post_init__`` rules raise their own). ``options`` go to pydantic (e.g. ``kw_only=True``)."""
    if cls is None:
        return functools.partial(config_dataclass, **options)
    validated = dataclass(frozen=True, config=_STRICT, **options)(cls)
    pydantic_init = _PYDANTIC_INIT[validated] = validated.__init__

    @functools.wraps(pydantic_init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        try:
            pydantic_init(self, *args, **kwargs)
        except ValidationError as err:
            raise _config_error(validated, type(self).__name__, err) from None

    validated.__init__ = __init__
    return validated


_PYDANTIC_INIT: dict[type, Any] = {}


def config_from_dict(cls: type, data: Any, where: str) -> Any:
    """``cls(**data)`` for a dict read from JSON, its errors located at ``where`` (``SERConfig.loss``)."""
    require(
        isinstance(data, dict),
        where,
        f"got {type(data).__name__}, expected an object of {cls.__name__} fields",
    )
    config = cls.__new__(cls)
    try:
        _PYDANTIC_INIT[cls](config, **data)
    except ValidationError as err:
        raise _config_error(cls, where, err) from None
    return config
