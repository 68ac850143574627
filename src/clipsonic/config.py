"""Typed, frozen configs that serialise to JSON and refuse unknown keys, wrong types, NaN/inf, values outside a
``Literal`` and numbers outside their :class:`Range`.

Every component has one :class:`Config` dataclass: defaults, choices (``Literal[...]``), ranges
(``Annotated[int, Range(1)]``, or the aliases below) and help (the comment beside each field) live there only;
the CLI flags are generated from them (``clipsonic.cli.options``), so a bad flag and a bad config file get the
same one-line message.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import types
import typing
from typing import Annotated, Any, TypeVar

from clipsonic.errors import ClipsonicError
from clipsonic.files import read_json, write_json_atomic

C = TypeVar("C", bound="Config")


class ConfigError(ClipsonicError, ValueError):
    """A config dict or file does not fit its dataclass (unknown key, wrong type)."""


@dataclasses.dataclass(frozen=True)
class Range:
    """``Annotated`` metadata: the interval a number field must lie in (``None``: unbounded on that side)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False  # True: low itself is excluded
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        return ((self.low is None or (value > self.low if self.low_open else value >= self.low))
                and (self.high is None or (value < self.high if self.high_open else value <= self.high)))

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low}"
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {self.high}"
        return f"in {'(' if self.low_open else '['}{self.low}, {self.high}{')' if self.high_open else ']'}"


PositiveInt = Annotated[int, Range(1)]
NonNegativeInt = Annotated[int, Range(0)]
Positive = Annotated[float, Range(0, low_open=True)]
NonNegative = Annotated[float, Range(0)]
Fraction = Annotated[float, Range(0, 1)]
Seed = Annotated[int, Range(0, 2**63 - 1)]  # what torch.manual_seed and numpy both take


@dataclasses.dataclass(frozen=True)
class Config:
    """``to_dict`` / ``from_dict`` / ``save`` / ``load``; every field is checked on construction (type, finite,
    ``Literal`` choice, :class:`Range`; also inside ``| None`` and tuples) before the subclass's own
    ``__post_init__`` runs."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("__post_init__")
        if own is not None:  # run the choice check first, whether or not the subclass calls super()

            @functools.wraps(own)
            def __post_init__(self, *args: Any) -> None:
                check_fields(self)
                own(self, *args)

            cls.__post_init__ = __post_init__

    def __post_init__(self) -> None:
        check_fields(self)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any], *, source: str = "config") -> C:
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a JSON object for {cls.__name__}, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        if unknown := sorted(set(data) - names):
            raise ConfigError(f"{source}: unknown key(s) {unknown} for {cls.__name__}; known keys are {sorted(names)}")
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for key, value in data.items():
            hint = hints.get(key)
            if isinstance(hint, type) and issubclass(hint, Config) and isinstance(value, dict):
                value = hint.from_dict(value, source=f"{source}.{key}")
            elif isinstance(value, list):
                value = _tuples(value)  # JSON has no tuples; frozen configs keep sequences as tuples
            kwargs[key] = value
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{source}: {exc}") from exc

    def replace(self: C, **changes: Any) -> C:
        return dataclasses.replace(self, **changes)

    def save(self, path: str | os.PathLike) -> None:
        write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls: type[C], path: str | os.PathLike) -> C:
        return cls.from_dict(read_json(path, f"{cls.__name__} config"), source=str(path))


@functools.cache
def _field_hints(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls, include_extras=True)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def check_fields(config: Config) -> None:
    """Raise a :class:`ConfigError` naming the first field whose value does not fit its annotation."""
    for name, hint in _field_hints(type(config)).items():
        if (problem := _misfit(hint, getattr(config, name))) is not None:
            raise ConfigError(f"{type(config).__name__}: {problem.replace('{name}', name)}")


def _misfit(hint: Any, value: Any) -> str | None:
    """What is wrong with ``value`` for the annotation ``hint`` (a sentence about ``{name}``), or None."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Annotated:
        if (problem := _misfit(args[0], value)) is not None:
            return problem
        return next((f"{{name}} must be {r}, got {value!r}" for r in args[1:] if isinstance(r, Range) and value not in r),
                    None)
    if origin is typing.Literal:
        return None if value in args else f"unknown {{name}} {value!r}; choose one of {', '.join(map(str, args))}"
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        problems = [_misfit(a, value) for a in args if a is not type(None)]
        return None if None in problems else problems[0]
    if origin is tuple:
        if not isinstance(value, tuple):
            return f"{{name}} must be a list, got {value!r}"
        items = args[:1] * len(value) if args[1:] == (...,) else args
        if len(items) != len(value):
            return f"{{name}} must have {len(items)} items, got {value!r}"
        return next((p for a, v in zip(items, value, strict=True) if (p := _misfit(a, v)) is not None), None)
    kind = {bool: "true or false", int: "an integer", float: "a number", str: "text"}.get(hint)
    if kind is None:
        return None  # nested configs check themselves; dicts and other types are the subclass's to check
    fits = (isinstance(value, bool) if hint is bool else isinstance(value, str) if hint is str else
            isinstance(value, hint if hint is int else (int, float)) and not isinstance(value, bool))
    if fits and hint is float and not math.isfinite(value):
        return f"{{name}} must be a finite number, got {value!r}"
    return None if fits else f"{{name}} must be {kind}, got {value!r}"


def _tuples(value: Any) -> Any:
    return tuple(map(_tuples, value)) if isinstance(value, list) else value


def _plain(value: Any) -> Any:
    if isinstance(value, Config):
        return value.to_dict()
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
