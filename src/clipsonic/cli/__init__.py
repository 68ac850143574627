"""``clipsonic`` command line: one entry point, one module per command group.

Each module in :data:`COMMAND_MODULES` exposes ``register(subparsers)`` and adds its
sub-commands with ``set_defaults(func=...)``. Commands parse arguments and call the Python API;
no logic lives here. Expected failures (:class:`ClipsonicError`) print one line and exit 2;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from clipsonic import __version__
from clipsonic.errors import ClipsonicError

COMMAND_MODULES = [
    "clipsonic.cli.media",
    "clipsonic.cli.preprocess",
    "clipsonic.cli.evaluate",
    "clipsonic.cli.vocoder",
    "clipsonic.cli.train",
    "clipsonic.cli.generate",
    "clipsonic.cli.prior",
    "clipsonic.cli.demo",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clipsonic",
        description="Learn text-to-audio synthesis from unlabeled videos (CLIPSonic).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"clipsonic {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    parser.add_argument("-q", "--quiet", action="store_true", help="only log warnings and errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
    except (ClipsonicError, FileNotFoundError) as exc:
        if args.debug:
            raise
        print(f"clipsonic {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"clipsonic {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


def examples(*lines: str) -> str:
    """An ``epilog`` listing usage examples, for every command's ``--help``."""
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)
