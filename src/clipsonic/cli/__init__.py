"""``clipsonic`` command line: each module adds its commands with ``register(sub)``. Expected failures
(:class:`ClipsonicError`, and what the OS, a text decoder or safetensors raise on a bad file or a full disk)
print one line and exit 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

# Before torch loads (its OpenMP runtime reads this once): idle OpenMP threads sleep instead of spinning. With the
# default (active) policy, torch on a 2-core machine beside any other busy process runs 3-10x slower
# (docs/benchmarks.md, "Threads"); passive costs a few per cent on an idle machine. The user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from safetensors import SafetensorError  # noqa: E402

from clipsonic import __version__  # noqa: E402
from clipsonic.cli import app, distill, evaluate, generate, train  # noqa: E402
from clipsonic.errors import ClipsonicError, one_line  # noqa: E402

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
    for module in (train, distill, generate, evaluate, app):
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
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # for the processes this command starts
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # here, not at exit: a reader that went away is a BrokenPipeError this handler sees
        return code
    except (ClipsonicError, OSError, UnicodeError, SafetensorError) as exc:
        if isinstance(exc, BrokenPipeError):  # the reader went away (`| head`): stop quietly, as cat does
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 141
        if args.debug:
            raise
        print(f"clipsonic {typed}: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"clipsonic {typed}: interrupted", file=sys.stderr)
        return 130
