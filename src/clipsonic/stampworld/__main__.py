"""``python -m clipsonic.stampworld OUT``: render StampWorld into OUT and print the path of its manifest.csv."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from clipsonic.errors import ClipsonicError, one_line
from clipsonic.files import lock_folder
from clipsonic.stampworld.world import StampWorldConfig, render_stampworld


def main(argv: list[str] | None = None) -> int:
    """Parse the flags, render under a lock on OUT; a :class:`ClipsonicError` is one line on stderr and exit 2."""
    parser = argparse.ArgumentParser(prog="python -m clipsonic.stampworld", description=__doc__)
    parser.add_argument("out", type=Path, metavar="OUT", help="folder to write the world into")
    parser.add_argument("--stamps", type=Path, default=None, metavar="DIR",
                        help="Tux Paint stamps folder (default $CLIPSONIC_STAMPS, else /usr/share/tuxpaint/stamps)")
    defaults = StampWorldConfig()
    for name, text in (("seed", "random seed of every clip"), ("train_videos_per_concept", "training videos"),
                       ("test_videos_per_concept", "test videos"), ("size", "frame side in pixels, even")):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=argparse.SUPPRESS, metavar="N",
                            help=f"{text} (default {getattr(defaults, name)})")
    parser.add_argument("--concepts", type=lambda text: tuple(text.split(",")), default=argparse.SUPPRESS,
                        metavar="A,B", help="comma-separated concept names (default: all 24)")
    args = parser.parse_args(argv)
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "stamps")}
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        config = StampWorldConfig.from_dict(settings)
        with lock_folder(args.out, "python -m clipsonic.stampworld") as out:
            manifest = render_stampworld(out, config, args.stamps)
    except ClipsonicError as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
    print(manifest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
