"""Typed, frozen configs that serialise to JSON and refuse unknown keys and values outside a ``Literal``.

Every component has one :class:`Config` dataclass: defaults, choices (``Literal[...]``) and help (the
comment beside each field) live there only; the CLI flags are generated from them (``clipsonic.cli.options``).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import typing
from typing import Any, TypeVar

from clipsonic.errors import ClipsonicError
from clipsonic.files import read_json, write_json_atomic

C = TypeVar("C", bound="Config")


class ConfigError(ClipsonicError, ValueError):
    """A config dict or file does not fit its dataclass (unknown key, wrong type)."""


@dataclasses.dataclass(frozen=True)
class Config:
    """``to_dict`` / ``from_dict`` / ``save`` / ``load``; a ``Literal`` field (also in ``| None`` or a tuple) is
    checked on construction, before the subclass's own ``__post_init__`` runs."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("__post_init__")
        if own is not None:  # run the choice check first, whether or not the subclass calls super()

            @functools.wraps(own)
            def __post_init__(self, *args: Any) -> None:
                check_choices(self)
                own(self, *args)

            cls.__post_init__ = __post_init__

    def __post_init__(self) -> None:
        check_choices(self)

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
                value = tuple(value)  # JSON has no tuples; frozen configs keep sequences as tuples
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


def _literal_choices(hint: Any) -> tuple:
    """The values a ``Literal[...]`` allows, also inside ``| None`` and ``tuple[..., ...]``; () for other types."""
    if typing.get_origin(hint) is typing.Literal:
        return typing.get_args(hint)
    return next(filter(None, map(_literal_choices, typing.get_args(hint))), ())


@functools.cache
def _field_choices(cls: type) -> dict[str, tuple]:
    hints = typing.get_type_hints(cls)
    return {f.name: c for f in dataclasses.fields(cls) if (c := _literal_choices(hints[f.name]))}


def check_choices(config: Config) -> None:
    for name, choices in _field_choices(type(config)).items():
        value = getattr(config, name)
        for item in value if isinstance(value, tuple) else (value,):
            if item is not None and item not in choices:
                raise ConfigError(f"{type(config).__name__}: unknown {name} {item!r}; "
                                  f"choose one of {', '.join(map(str, choices))}")


def _plain(value: Any) -> Any:
    if isinstance(value, Config):
        return value.to_dict()
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
