"""Typed, frozen configs that serialise to JSON and refuse unknown keys.

Every component (mel front end, network, diffusion, training, vocoder, prior) has one frozen
dataclass deriving from :class:`Config`. Defaults live in the dataclass and nowhere else; the
dict form is written into every checkpoint and dataset so a saved directory is self-describing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import tempfile
import typing
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

from clipsonic.errors import ClipsonicError

C = TypeVar("C", bound="Config")


class ConfigError(ClipsonicError, ValueError):
    """A config dict or file does not fit its dataclass (unknown key, wrong type)."""


@dataclasses.dataclass(frozen=True)
class Config:
    """Base class: ``to_dict`` / ``from_dict`` / ``save`` / ``load`` for frozen dataclasses."""

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.to_dict() if isinstance(value, Config) else _plain(value)
        return out

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any], *, source: str = "config") -> C:
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a JSON object for {cls.__name__}, got {type(data).__name__}")
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ConfigError(
                f"{source}: unknown key(s) {unknown} for {cls.__name__}; known keys are {sorted(names)}"
            )
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
        return cls.from_dict(read_config_json(path), source=str(path))


def read_config_json(path: str | os.PathLike) -> Any:
    """The parsed JSON of a config file; :class:`ConfigError` naming the file when missing or malformed."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Write JSON to a temporary file in the same folder, then rename: readers never see half a file."""
    write_bytes_atomic(path, (json.dumps(data, indent=2, sort_keys=False) + "\n").encode())


def write_bytes_atomic(path: str | os.PathLike, payload: bytes) -> None:
    with atomic_output(path) as tmp:
        tmp.write_bytes(payload)


def _default_file_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is fsynced and renamed onto ``path``.

    Readers never see a half-written file, a failure (or a kill) leaves the old file intact, and
    the temporary (``.{name}.XXXX.tmp``, which resumable writers clean up) is removed on error.
    The file gets the usual permissions (umask), not mkstemp's private 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, _default_file_mode())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def swap_in_directory(tmp: Path, target: Path) -> None:
    """Move the complete directory ``tmp`` to ``target``, replacing what was there.

    A directory cannot be renamed over a non-empty one, so the old one is renamed aside first
    and put back if the second rename fails; readers see the old or the new, never a mixture.
    """
    old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
    if target.exists():
        os.replace(target, old)
    try:
        os.replace(tmp, target)
    except BaseException:
        if old.exists():
            os.replace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)
