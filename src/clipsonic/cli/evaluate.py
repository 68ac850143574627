"""``clipsonic evaluate`` (FAD / CLAP score / guidance sweep) and ``clipsonic listening-test make|score``."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from clipsonic.cli import examples
from clipsonic.errors import ClipsonicError

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    _register_evaluate(sub)
    _register_listening(sub)


# --- evaluate ---------------------------------------------------------------------------------


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _modes(text: str) -> tuple[str, ...]:
    return tuple(m.strip().lower() for m in text.split(",") if m.strip())


def _register_evaluate(sub: argparse._SubParsersAction) -> None:
    from clipsonic.embedders import EMBEDDERS
    from clipsonic.evaluate.config import ALL_MODES
    from clipsonic.evaluate.relevance import CLASSIFIERS

    p = sub.add_parser(
        "evaluate",
        help="FAD and CLAP score per query mode (the paper's Table 1), guidance sweeps",
        description="For each test clip: generate with IQ (its middle frame) and with the text modes from its "
                    "label; score every set against the real test audio (FAD) and against the label (CLAP "
                    "score); the vocoder's reconstruction of the real mels is the upper-bound row. Writes "
                    "results.json, results.md, guidance_sweep.png and all audio (audio/<mode>/w<w>/, with "
                    "manifests for `listening-test make`). Generated audio and embeddings are cached: rerunning "
                    "with another --embedder or --clap-weights regenerates nothing.",
        epilog=examples(
            "clipsonic evaluate --model runs/vgg/pipeline --data data/vgg --out reports/vgg "
            "--embedder-weights ~/weights/vggish.safetensors --clap-weights ~/weights/630k-audioset-best.pt",
            "clipsonic evaluate --model M --data D --out R --modes iq,zs,pd --sweep 0,0.5,1,1.5,2,3,4 --num-clips 500",
            "clipsonic evaluate --model M --data D --out R --embedder mel-stats --num-clips 8 --steps 25   # plumbing check",
            "clipsonic evaluate --model M --data D --out R --captions captions.json --classifier sonicworld",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", type=Path, required=True, help="pipeline directory (output of training)")
    p.add_argument("--data", type=Path, required=True, help="dataset directory with a test split stored with audio")
    p.add_argument("--out", type=Path, required=True, help="report directory")
    p.add_argument("--modes", type=_modes, default=(),
                   help=f"comma-separated, of {','.join(ALL_MODES)} (default: all the model supports)")
    p.add_argument("--guidance", type=float, default=1.5, help="guidance scale w of the table (default 1.5)")
    p.add_argument("--sweep", type=_floats, default=(), metavar="W,W,…",
                   help="also generate at these w and plot FAD / CLAP score against w")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the pipeline's)")
    p.add_argument("--sampler", default=None, help="sampler name (default: the pipeline's)")
    p.add_argument("--num-clips", type=int, default=None, help="evaluate N clips spread over the split (default: all)")
    p.add_argument("--split", default="test", help="dataset split (default: test)")
    p.add_argument("--embedder", choices=EMBEDDERS, default="vggish",
                   help="FAD backbone (default vggish, as the paper; mel-stats is a weight-free sanity check "
                        "whose FAD is not comparable with published numbers)")
    p.add_argument("--embedder-weights", default=None, help="weights file of the FAD embedder")
    p.add_argument("--clap-weights", default=None, help="LAION-CLAP checkpoint for the CLAP score (e.g. 630k-audioset-best.pt)")
    p.add_argument("--seed", type=int, default=0, help="clip i is generated with seed + i")
    p.add_argument("--text-template", default="{label}", help="text query built from the label (default '{label}')")
    p.add_argument("--clap-template", default="{label}", help="CLAP text built from the label (default '{label}')")
    p.add_argument("--captions", default=None, metavar="FILE",
                   help="JSON {label: [caption, ...]}: text modes query clip i with caption i %% n of its label "
                        "instead of --text-template")
    p.add_argument("--classifier", default=None, metavar="NAME",
                   help=f"audio classifier for a relevance column (accuracy on the label), one of "
                        f"{', '.join(sorted(CLASSIFIERS))}; it only scores: cached audio is reused")
    p.add_argument("--batch-size", type=int, default=8, help="clips per generation call")
    p.add_argument("--device", default=None, help="cuda, cpu, … (default: cuda if available)")
    p.set_defaults(func=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from clipsonic.config import ConfigError
    from clipsonic.evaluate import EvalConfig, run_evaluation

    try:
        config = EvalConfig(modes=args.modes, guidance=args.guidance, sweep=args.sweep, steps=args.steps,
                            sampler=args.sampler, num_clips=args.num_clips, split=args.split,
                            embedder=args.embedder, embedder_weights=args.embedder_weights,
                            clap_weights=args.clap_weights, seed=args.seed, text_template=args.text_template,
                            clap_template=args.clap_template, captions=args.captions, classifier=args.classifier,
                            batch_size=args.batch_size, device=args.device)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    with tqdm(total=0, unit="clip", disable=None, dynamic_ncols=True) as bar:
        def progress(done: int, total: int, what: str) -> None:
            bar.total = total
            bar.set_description(what, refresh=False)
            bar.update(done - bar.n)

        run_evaluation(args.model, args.data, args.out, config, progress=progress)
    print((args.out / "results.md").read_text(), end="")
    print(f"\nwrote {args.out / 'results.json'}, {args.out / 'results.md'}"
          + (f", {args.out / 'guidance_sweep.png'}" if (args.out / "guidance_sweep.png").is_file() else ""))
    return 0


# --- listening-test ---------------------------------------------------------------------------


def _register_listening(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "listening-test",
        help="build a listening-test web page, or score the answers (MOS ± 95%% CI)",
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
