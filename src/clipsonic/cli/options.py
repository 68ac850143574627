"""What every command shares (``--help`` layout, progress bars), and flags generated from config dataclasses
(improved-diffusion's ``add_dict_to_argparser``): a field's name gives the flag (``batch_size`` → ``--batch-size``),
its annotation the type (``bool`` → ``--x/--no-x``, ``tuple`` → a comma list, ``Literal`` → choices), its default
and source comment the help."""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import functools
import inspect
import logging
import os
import sys
import textwrap
import tokenize
import types
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from clipsonic.config import Config, ConfigError
from clipsonic.errors import ClipsonicError
from clipsonic.files import read_json
from clipsonic.pipeline.paths import model_path

log = logging.getLogger(__name__)


class _Formatter(argparse.HelpFormatter):
    """Descriptions wrap paragraph by paragraph; indented lines (the examples) stay as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "\n".join(line if line.startswith("  ") else textwrap.fill(line, width, initial_indent=indent,
                                                                         subsequent_indent=indent)
                         for line in text.splitlines())


def command(sub: argparse._SubParsersAction, name: str, func, help: str, description: str,
            *examples: str) -> argparse.ArgumentParser:
    """A listed sub-command whose ``--help`` ends with usage examples."""
    parser = sub.add_parser(name, help=help, description=description, formatter_class=_Formatter,
                            epilog="examples:\n" + "\n".join(f"  {line}" for line in examples))
    parser.set_defaults(func=func)
    parser.add_argument("--threads", type=positive_int, metavar="N",
                        help="torch CPU threads (default: one per core; 1 when other heavy work shares the machine)")
    return parser


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 1")
    return value


def model(text: str) -> Path:
    """``--model``: a pipeline folder, or ``builtin:NAME`` for a built-in model (``builtin:sonicworld``)."""
    try:
        return model_path(text)
    except ClipsonicError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def device(text: str) -> str:
    """``--device``'s type: a torch device this machine has (argparse prints the message as the error line)."""
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a torch device (cpu, cuda, cuda:1, mps)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text!r}: this machine has no CUDA GPU that torch can use (use cpu)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(f"{text!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise argparse.ArgumentTypeError(f"{text!r}: this machine has no Apple GPU that torch can use (use cpu)")
    return text


def main_process() -> bool:
    """False in the other processes of a multi-process launch (they print nothing)."""
    return os.environ.get("RANK", "0") == "0"


@contextlib.contextmanager
def progress_bar(unit: str = "step", keys: tuple[str, ...] = ("loss",)) -> Iterator[Callable[..., None]]:
    """A tqdm bar fed by ``progress(done, total, logs=None)``, made at the first call so early errors show none."""
    bars = []

    def progress(done: int, total: int, logs: dict | None = None) -> None:
        if not bars:
            bars.append(tqdm(unit=unit, dynamic_ncols=True, file=sys.stderr, disable=not main_process()))
        bar = bars[0]
        bar.total = total
        if logs:
            bar.set_postfix({k: f"{logs[k]:.4g}" for k in keys if logs.get(k) is not None}, refresh=False)
        bar.update(done - bar.n)

    try:
        yield progress
    finally:
        for bar in bars:
            bar.close()


def add_config_flags(parser: argparse.ArgumentParser, cls: type[Config], section: str, *,
                     only: tuple[str, ...] = (), prefix: str = "", title: str | None = None) -> None:
    """One flag ``--{prefix}{field}`` per plain field of ``cls`` (nested configs and dicts: ``--config``)."""
    group = parser.add_argument_group(title or f"{section} ({cls.__module__}.{cls.__name__})")
    hints, helps = typing.get_type_hints(cls), field_help(cls)
    for f in dataclasses.fields(cls):
        kind = {"type": device, "metavar": "DEVICE"} if f.name == "device" else _argument(hints[f.name])
        if kind is None or (only and f.name not in only):
            continue
        flag = f"--{prefix}{f.name}".replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        shown = (",".join(map(str, default)) if isinstance(default, tuple) else
                 flag.replace("--", "--" if default else "--no-") if isinstance(default, bool) else default)
        text = helps.get(f.name, "") + ("" if default in (None, ()) else f" (default {shown})")
        group.add_argument(flag, dest=f"{section}.{f.name}", default=argparse.SUPPRESS,
                           help=text.strip().replace("%", "%%"), **kind)


def overrides(args: argparse.Namespace, config: Path | None = None) -> dict[str, dict[str, Any]]:
    """The sections of ``--config FILE`` with the flags the user gave on top (``{"train": {...}, ...}``)."""
    out = read_json(config, "--config file") if config is not None else {}
    if not isinstance(out, dict):
        raise ConfigError(f"{config}: expected a JSON object of config sections")
    for dest, value in vars(args).items():
        if "." in dest:  # "options.clips.stride_seconds" → out["options"]["clips"]["stride_seconds"]
            *path, name = dest.split(".")
            section = out
            for key in path:
                section = section.setdefault(key, {})
                if not isinstance(section, dict):
                    raise ConfigError(f"{config}: section {key!r} must be a JSON object of settings")
            section[name] = value
    return out


def deprecated_alias(parser: argparse.ArgumentParser, old: str, new: str, **kwargs: Any) -> None:
    """A hidden old spelling of a flag: it works, and says once which flag replaces it."""

    class Alias(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):
            log.warning("%s is deprecated; use %s", old, new)
            value = self.const if self.nargs == 0 else values
            if isinstance(value, tuple):  # a repeatable old flag (--template T) collects its values
                value = getattr(namespace, self.dest, ()) + value
            setattr(namespace, self.dest, value)

    parser.add_argument(old, action=Alias, help=argparse.SUPPRESS, default=argparse.SUPPRESS, **kwargs)


def _argument(hint: Any) -> dict[str, Any] | None:
    """argparse keywords for a field's annotation; None for what a flag cannot say (nested configs, dicts)."""
    origin, args = typing.get_origin(hint), [a for a in typing.get_args(hint) if a is not type(None)]
    if origin is typing.Literal:
        return {"choices": args, "type": type(args[0])}
    if origin in (typing.Union, types.UnionType) and len(args) == 1:
        return _argument(args[0])
    if origin is tuple and args[1:] == [...] and (item := _argument(args[0])) and "type" in item:
        return {"type": _comma_list(item["type"]), "metavar": ",".join(item.get("choices", ())) or item["metavar"] + ",…"}
    if hint is bool:
        return {"action": argparse.BooleanOptionalAction}
    return {"type": hint, "metavar": {int: "N", float: "X"}.get(hint, "TEXT")} if hint in (int, float, str) else None


def _comma_list(item: type) -> Any:
    def parse(text: str) -> tuple:
        return tuple(item(v.strip()) for v in text.split(",") if v.strip())

    parse.__name__ = f"comma-separated {item.__name__}"  # argparse names it in "invalid … value"
    return parse


@functools.cache
def field_help(cls: type) -> dict[str, str]:
    """Each field's comment in the class source: on the field's line, else the comment lines above it."""
    helps: dict[str, str] = {}
    for klass in reversed(cls.__mro__):  # a subclass's comment wins over its base's
        if klass is Config or not dataclasses.is_dataclass(klass):
            continue
        source = textwrap.dedent(inspect.getsource(klass))
        lines = source.splitlines()
        comments = {tok.start[0]: tok.string.lstrip("#").strip()
                    for tok in tokenize.generate_tokens(iter(source.splitlines(True)).__next__)
                    if tok.type == tokenize.COMMENT}
        for node in ast.parse(source).body[0].body:
            if isinstance(node, ast.AnnAssign):
                first = node.lineno
                while first - 1 in comments and lines[first - 2].lstrip().startswith("#"):
                    first -= 1
                text = comments.get(node.lineno) or " ".join(comments[row] for row in range(first, node.lineno))
                if text:
                    helps[node.target.id] = text
    return helps
