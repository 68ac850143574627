"""``clipsonic evaluate`` (FAD / CLAP score / guidance sweep) and ``clipsonic listening-test make|score``."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from clipsonic.cli import examples
from clipsonic.errors import ClipsonicError

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    _register_listening(sub)


# --- listening-test ---------------------------------------------------------------------------


def _register_listening(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "listening-test",
        help="build a listening-test web page, or score the answers (MOS ± 95% CI)",
        description="Listening tests as in the paper: `make` writes a static page (no server) that plays "
                    "trials in random order with hidden system names and collects 1-5 ratings of fidelity "
                    "and relevance; `score` turns the answers CSVs into MOS ± 95% CI per system.",
        epilog=examples(
            "clipsonic listening-test make --systems PD=report/audio/pd/w1.5 ZS=report/audio/zs/w1.5 "
            "Real=report/audio/reference --out lt/ --items 20",
            "clipsonic listening-test score answers-*.csv --test lt/ --out lt/scores",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = p.add_subparsers(dest="listening_command", metavar="make|score")
    make = commands.add_parser("make", help="write the page, its audio and the key",
                               description="A system is a folder of audio with manifest.jsonl "
                                           "({\"file\", \"item\", \"query\"} per line, as `evaluate` writes) "
                                           "or a <stem>.txt query beside each audio file.")
    make.add_argument("--systems", nargs="+", required=True, metavar="NAME=DIR",
                      help="systems to compare (names are hidden from listeners)")
    make.add_argument("--out", type=Path, required=True, help="test folder: page/ for listeners, key.json for you")
    make.add_argument("--items", type=int, default=None, help="rate only N items shared by all systems (drawn with --seed)")
    make.add_argument("--seed", type=int, default=0, help="seed for the item draw and file names")
    make.add_argument("--title", default="Listening test", help="page title")
    make.set_defaults(func=run_listening_make)
    score = commands.add_parser("score", help="MOS ± 95%% CI per system and criterion")
    score.add_argument("answers", nargs="+", type=Path, help="answers CSVs downloaded by listeners")
    score.add_argument("--test", type=Path, default=None,
                       help="the test folder (with key.json); default: the first answers file's folder or its parents")
    score.add_argument("--out", type=Path, default=None, help="write mos.md and mos.json here")
    score.set_defaults(func=run_listening_score)
    p.set_defaults(func=lambda args: p.print_help() or 2)


def _parse_systems(values: list[str]) -> dict[str, Path]:
    systems: dict[str, Path] = {}
    for value in values:
        name, sep, folder = value.partition("=")
        if not sep or not name or not folder:
            raise ClipsonicError(f"--systems wants NAME=DIR, got {value!r}")
        if name in systems:
            raise ClipsonicError(f"system name {name!r} given twice")
        systems[name] = Path(folder)
    return systems


def run_listening_make(args: argparse.Namespace) -> int:
    from clipsonic.listening import make_listening_test, read_key

    page = make_listening_test(_parse_systems(args.systems), args.out, num_items=args.items, seed=args.seed,
                               title=args.title)
    key = read_key(args.out)
    print(f"listening test {key['test_id']}: {len(key['trials'])} trials; send listeners {page.parent}/ "
          f"(open index.html); keep {args.out / 'key.json'}")
    return 0


def _find_test(answers: list[Path]) -> Path:
    from clipsonic.listening.make import KEY_FILE

    first = answers[0].resolve()
    for folder in first.parents:
        if (folder / KEY_FILE).is_file():
            return folder
    raise ClipsonicError(f"no key.json beside or above {answers[0]}; pass --test with the folder `listening-test make` wrote")


def run_listening_score(args: argparse.Namespace) -> int:
    from clipsonic.listening import format_table, read_key, score_answers, write_results

    test = args.test or _find_test(args.answers)
    results = score_answers(args.answers, test)
    key = read_key(test)
    print(f"MOS ± 95% CI (Student t), listening test {key['test_id']}, {len(args.answers)} answers file(s)\n")
    print(format_table(results), end="")
    if args.out is not None:
        md, js = write_results(results, args.out, key["test_id"])
        print(f"\nwrote {md} and {js}")
    return 0
