"""``clipsonic`` command line: each module adds its commands with ``register(sub)``. Expected failures
(:class:`ClipsonicError`) print one line and exit 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import sys

from clipsonic import __version__
from clipsonic.cli import evaluate, generate, train
from clipsonic.errors import ClipsonicError

log = logging.getLogger(__name__)

# Old spellings that still work but are not listed: (command, word) → what replaces them.
ALIASES = {
    ("train", "export"): ["export"],
    ("vocoder", "export"): ["export"],
    ("prior", "attach"): ["attach", "prior"],
    ("vocoder", "attach"): ["attach", "vocoder"],
    ("preprocess", "merge"): ["preprocess", "--merge"],
    ("resynth",): ["vocode", "--griffin-lim", "--iters", "64"],  # resynth's own default
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clipsonic",
                                     description="Learn text-to-audio synthesis from unlabeled videos (CLIPSonic).")
    parser.add_argument("--version", action="version", version=f"clipsonic {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    parser.add_argument("-q", "--quiet", action="store_true", help="only log warnings and errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in (train, generate, evaluate):
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    at = next((i for i, a in enumerate(argv) if not a.startswith("-")), len(argv))  # global flags take no value
    typed = argv[at] if at < len(argv) else "clipsonic"
    old = next((k for k in ALIASES if tuple(argv[at:at + len(k)]) == k), None)
    if old:
        argv[at:at + len(old)] = ALIASES[old]
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    if old:
        log.warning("`clipsonic %s` is deprecated; use `clipsonic %s`", " ".join(old), " ".join(ALIASES[old]))
    if not getattr(args, "func", None):
        build_parser().print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ClipsonicError, FileNotFoundError) as exc:
        if args.debug:
            raise
        print(f"clipsonic {typed}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"clipsonic {typed}: interrupted", file=sys.stderr)
        return 130
