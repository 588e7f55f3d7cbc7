"""The common ground of the project's settings models (ser_stack/settings.py): a field is one
environment variable (:func:`env_field`: the variable as its alias, its type, default and meaning),
read by :meth:`EnvironmentSettings.from_env` from a mapping (the process's environment by default),
an empty variable being unset; its text is parsed by the field's :func:`parsed` validator, and a
bad value is a :class:`SettingsError` of one line naming the variable, the value and what is
expected (the secrets' fields take any text: no message shows one)."""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Self

from pydantic import AliasChoices, BeforeValidator, Field, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined, PydanticUseDefault
from pydantic_settings import BaseSettings, SettingsConfigDict


class SettingsError(ValueError):
    """Variables of the environment hold values the project cannot use: one line naming each
    variable, its value and what is expected."""


# ------------------------------------------------------------------ reading one variable's text


def parsed(parse: Callable[[str], Any]) -> BeforeValidator:
    """The field's validator: ``parse`` of the variable's text (a default passes as it is).
    ``parse`` raises ValueError saying what is expected, or PydanticUseDefault for blank text."""
    return BeforeValidator(lambda value: parse(value) if isinstance(value, str) else value)


def stripped(text: str) -> str:
    """``text`` without surrounding blanks; blank text stands for the field's default."""
    if not text.strip():
        raise PydanticUseDefault()
    return text.strip()


def one_of(*choices: str, lower: bool = False) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = stripped(text).lower() if lower else stripped(text)
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}")
        return value

    return parse


def whole_number(minimum: int, expected: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = stripped(text)
        if not (value.isdigit() and int(value) >= minimum):
            raise ValueError(f"expected {expected}")
        return int(value)

    return parse


def positive(kind: type[int] | type[float]) -> Callable[[str], int | float]:
    def parse(text: str) -> int | float:
        try:
            value = kind(stripped(text))
        except ValueError:
            raise ValueError(f"expected a positive {kind.__name__}") from None
        if not value > 0:
            raise ValueError(f"expected a positive {kind.__name__}")
        return value

    return parse


def flag(text: str) -> bool:
    if stripped(text) not in ("0", "1"):
        raise ValueError("expected 1 (on) or 0 (off)")
    return text.strip() == "1"


def user_path(text: str) -> Path:
    return Path(text).expanduser()


def env_field(
    variable: str | AliasChoices,
    default: Any = PydanticUndefined,
    meaning: str = "",
    *,
    used_by: tuple[str, ...] = (),
    shown: str | None = None,
    secret: bool = False,
    **field: Any,
) -> Any:
    """A field read from ``variable`` (or the first of several set): ``meaning`` is its description;
    ``used_by`` the files (with the function) that read or set it; ``shown`` its default as the
    documentation writes it (for a derived one); ``secret`` keeps it out of repr."""
    extra: dict[str, Any] = {"used_by": list(used_by)}
    if shown is not None:
        extra["shown"] = shown
    return Field(
        default,
        validation_alias=variable,
        description=meaning,
        repr=not secret,
        json_schema_extra=extra,
        **field,
    )


def variables(field: FieldInfo) -> tuple[str, ...]:
    """The variable names a field is read from, in order."""
    alias = field.validation_alias
    if isinstance(alias, AliasChoices):
        return tuple(str(choice) for choice in alias.choices)
    return (str(alias),)


@functools.cache
def _variable_names(model: type[BaseSettings]) -> frozenset[str]:
    return frozenset(name for field in model.model_fields.values() for name in variables(field))


class EnvironmentSettings(BaseSettings):
    """Settings whose every value comes from a mapping of environment variables (:meth:`from_env`)."""

    # defaults are the models' own values: only what the environment gives is validated
    model_config = SettingsConfigDict(
        case_sensitive=True, frozen=True, extra="ignore", validate_default=False
    )

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, **_):
        # only what from_env passes: a test's mapping is all there is, never os.environ beside it
        return (init_settings,)

    @classmethod
    def reads(cls, name: str) -> bool:
        """Whether the environment variable ``name`` is one of this model's."""
        return name in _variable_names(cls)

    @classmethod
    def variable(cls, field_name: str) -> str:
        """The variable of a field (the first, where it has several)."""
        return variables(cls.model_fields[field_name])[0]

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Self:
        """The settings from ``env`` (default: this process's environment); an empty variable is
        unset. A bad value raises SettingsError naming it."""
        source = os.environ if env is None else env
        given = {name: value for name, value in source.items() if value != "" and cls.reads(name)}
        try:
            return cls(**given)
        except ValidationError as err:
            raise SettingsError(cls._one_line(err)) from None

    @classmethod
    def _one_line(cls, err: ValidationError) -> str:
        problems = []
        for error in err.errors(include_url=False):
            if error["type"] == "default_factory_not_called":
                continue  # a value derived from one that failed, which is named
            message = error["msg"].removeprefix("Value error, ")
            variable = str(error["loc"][0]) if error["loc"] else ""
            if variable and not message.startswith(f"{variable}="):
                message = f"{variable}={error['input']!r}: {message}"
            problems.append(message)
        return "; ".join(problems)


def markdown_table(model: type[EnvironmentSettings]) -> list[str]:
    """The lines of a model's section of docs/ENVIRONMENT.md: its docstring and a row per field."""
    used = any(f.json_schema_extra["used_by"] for f in model.model_fields.values())
    header = ["variable", "default", *(["used by"] if used else []), "meaning"]
    lines = ["", f"## {model.__name__}", "", inspect.cleandoc(model.__doc__), ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for field in model.model_fields.values():
        row = [" / ".join(f"`{name}`" for name in variables(field)), f"`{_shown_default(field)}`"]
        row += [", ".join(field.json_schema_extra["used_by"])] if used else []
        lines.append("| " + " | ".join([*row, field.description]) + " |")
    return lines


def _shown_default(field: FieldInfo) -> str:
    if "shown" in field.json_schema_extra:
        return field.json_schema_extra["shown"]
    if field.default is None:
        return "unset"
    if isinstance(field.default, bool):
        return str(int(field.default))
    return str(field.default)
