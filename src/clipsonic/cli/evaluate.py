"""``clipsonic evaluate`` (FAD / CLAP score / guidance sweep), ``clipsonic listening-test make|score`` and
``clipsonic demo`` (the whole method on SonicWorld or StampWorld, offline, on a CPU)."""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

from clipsonic import listening
from clipsonic.cli import options
from clipsonic.errors import ClipsonicError
from clipsonic.evaluate import EvalConfig, run_evaluation
from clipsonic.listening.make import KEY_FILE
from clipsonic.sonicworld import OracleClassifier
from clipsonic.sonicworld.clock import DemoProgress
from clipsonic.sonicworld.demo import run_demo
from clipsonic.stampworld.demo import run_stampworld_demo
from clipsonic.stampworld.judge import StampJudge

# Audio classifiers for the relevance column: SonicWorld's oracle (the whole sound; "-spectrum": pitch and partials
# only, the verdict of earlier tables) and StampWorld's shipped judge.
CLASSIFIERS = {"sonicworld": OracleClassifier, "sonicworld-spectrum": functools.partial(OracleClassifier, strict=False),
               "stampworld": StampJudge.from_pretrained}


def register(sub: argparse._SubParsersAction) -> None:
    p = options.command(
        sub, "evaluate", run_evaluate, "FAD and CLAP score per query mode (the paper's Table 1), guidance sweeps",
        "For each test clip: generate with IQ (its middle frame) and with the text modes from its label; score every "
        "set against the real test audio (FAD) and against the label (CLAP score); the vocoder's reconstruction of "
        "the real mels is the upper-bound row. Writes results.json, results.md, guidance_sweep.png and all audio "
        "(audio/<mode>/w<w>/, with manifests for `listening-test make`). Generated audio and embeddings are cached: "
        "rerunning with another --embedder or --clap-weights regenerates nothing.",
        "clipsonic evaluate --model runs/vgg/pipeline --data data/vgg --out reports/vgg "
        "--embedder-weights ~/weights/vggish.safetensors --clap-weights ~/weights/630k-audioset-best.pt",
        "clipsonic evaluate --model M --data D --out R --modes iq,zs,pd --sweep 0,0.5,1,1.5,2,3,4 --num-clips 500",
        "clipsonic evaluate --model M --data D --out R --embedder mel-stats --num-clips 8 --steps 25   # plumbing check",
        "clipsonic evaluate --model M --data D --out R --captions captions.json --classifier sonicworld")
    p.add_argument("--model", type=options.model, required=True,
                   help="pipeline directory (output of training), or builtin:NAME")
    p.add_argument("--data", type=Path, required=True, help="dataset directory with a test split stored with audio")
    p.add_argument("--out", type=Path, required=True, help="report directory")
    p.add_argument("--classifier", metavar="NAME", help=f"audio classifier for a relevance column (accuracy on the "
                   f"label), one of {', '.join(CLASSIFIERS)}; it only scores: cached audio is reused")
    options.add_config_flags(p, EvalConfig, "eval", title="evaluation (written into results.json)")
    options.deprecated_alias(p, "--guidance", "--guidance-scale", type=float, dest="eval.guidance_scale")

    p = options.command(
        sub, "listening-test", None,
        "build a listening-test web page, or score the answers (MOS ± 95%% CI)",
        "Listening tests as in the paper: `make` writes a static page (no server) that plays trials in random order "
        "with hidden system names and collects 1-5 ratings of fidelity and relevance; `score` turns the answers CSVs "
        "into MOS ± 95% CI per system.",
        "clipsonic listening-test make --systems PD=report/audio/pd/w1.5 ZS=report/audio/zs/w1.5 "
        "Real=report/audio/reference --out lt/ --items 20",
        "clipsonic listening-test score answers-*.csv --test lt/ --out lt/scores")
    p.set_defaults(func=lambda args, parser=p: parser.print_help() or 2)  # no make|score: this command's help
    commands = p.add_subparsers(dest="listening_command", metavar="make|score")
    make = commands.add_parser("make", help="write the page, its audio and the key",
                               description="A system is a folder of audio with manifest.jsonl ({\"file\", \"item\", "
                                           "\"query\"} per line, as `evaluate` writes) or a <stem>.txt query beside "
                                           "each audio file.")
    make.add_argument("--systems", nargs="+", required=True, metavar="NAME=DIR",
                      help="systems to compare (names are hidden from listeners)")
    make.add_argument("--out", type=Path, required=True, help="test folder: page/ for listeners, key.json for you")
    make.add_argument("--items", type=int, help="rate only N items shared by all systems (drawn with --seed)")
    make.add_argument("--seed", type=int, default=0, help="seed for the item draw and file names (default 0)")
    make.add_argument("--title", default="Listening test", help="page title")
    make.add_argument("--overwrite", action="store_true", help="replace the test already in --out (its answers can "
                                                               "then no longer be scored)")
    make.set_defaults(func=run_listening_make)
    score = commands.add_parser("score", help="MOS ± 95%% CI per system and criterion")
    score.add_argument("answers", nargs="+", type=Path, help="answers CSVs downloaded by listeners")
    score.add_argument("--test", type=Path, help="the test folder (with key.json); default: the first answers "
                                                 "file's folder or its parents")
    score.add_argument("--out", type=Path, help="write mos.md and mos.json here")
    score.set_defaults(func=run_listening_score)

    p = options.command(
        sub, "demo", run_demo_command,
        "reproduce the whole pipeline on SonicWorld (offline, 2 CPU cores: ~30 min, --fast ~5 min)",
        "Render SonicWorld (8 concepts that each look and sound their own way, as H.264/AAC videos), train its CLIP, "
        "preprocess the videos, train the mel diffusion model, a prior and (without --fast) a tiny BigVGAN, then "
        "generate every test concept in modes iq/zs/pd/shift/knn and evaluate: relevance by an exact oracle of the "
        "world's sounds, FAD (mel-stats), a guidance sweep and the CLIP's modality gap. Writes DIR/report.html and "
        "DIR/metrics.json. Re-running the same command reuses the finished steps. --world stampworld does the same on "
        "StampWorld (24 concepts of Tux Paint's recorded sounds and pictures, 4-s clips) and first trains (or copies) the world's "
        "judge (DIR/judge), which gives the relevance column.",
        "clipsonic demo", "clipsonic demo --fast --out /tmp/demo-fast",
        "clipsonic demo --world stampworld --out stampworld-demo   # real sounds and pictures (Tux Paint), 149 min")
    p.add_argument("--world", choices=("sonicworld", "stampworld"), default="sonicworld",
                   help="sonicworld (synthetic, exact oracle) or stampworld (Tux Paint's recorded sounds and pictures, "
                        "judged by a classifier the demo trains; needs the tuxpaint-stamps-default package)")
    p.add_argument("--stamps", type=Path, metavar="DIR", help="(stampworld) Tux Paint stamps folder (default "
                   "$CLIPSONIC_STAMPS, else /usr/share/tuxpaint/stamps)")
    p.add_argument("--out", type=Path, help="output folder (default <world>-demo)")
    p.add_argument("--fast", action="store_true", help="smaller world and shorter training, Griffin-Lim vocoder "
                   "(sonicworld ~5 min; stampworld: 4 concepts, a plumbing check in ~1 min)")


def run_evaluate(args: argparse.Namespace) -> None:
    config = EvalConfig.from_dict(options.overrides(args).get("eval", {}), source="flags")
    if args.classifier is not None and args.classifier not in CLASSIFIERS:
        raise ClipsonicError(f"unknown classifier {args.classifier!r}; choose one of {', '.join(CLASSIFIERS)}")
    classifier = CLASSIFIERS[args.classifier]() if args.classifier else None
    with options.progress_bar("clip") as bar:
        run_evaluation(args.model, args.data, args.out, config, classifier=classifier,
                       progress=lambda done, total, what: bar(done, total))
    print((args.out / "results.md").read_text(), end="")
    sweep = args.out / "guidance_sweep.png"
    print(f"\nwrote {args.out / 'results.json'}, {args.out / 'results.md'}" + (f", {sweep}" if sweep.is_file() else ""))


def run_listening_make(args: argparse.Namespace) -> None:
    systems = dict(value.partition("=")[::2] for value in args.systems)
    if not all(systems) or not all(systems.values()) or len(systems) < len(args.systems):
        raise ClipsonicError(f"--systems wants distinct NAME=DIR pairs, got {' '.join(args.systems)}")
    page = listening.make_listening_test({k: Path(v) for k, v in systems.items()}, args.out,
                                         num_items=args.items, seed=args.seed, title=args.title,
                                         overwrite=args.overwrite)
    key = listening.read_key(args.out)
    print(f"listening test {key['test_id']}: {len(key['trials'])} trials; send listeners {page.parent}/ "
          f"(open index.html); keep {args.out / KEY_FILE}")


def run_listening_score(args: argparse.Namespace) -> None:
    test = args.test or next((d for d in args.answers[0].resolve().parents if (d / KEY_FILE).is_file()), None)
    if test is None:
        raise ClipsonicError(f"no {KEY_FILE} beside or above {args.answers[0]}; pass --test with the folder "
                             "`listening-test make` wrote")
    results = listening.score_answers(args.answers, test)
    key = listening.read_key(test)
    print(f"MOS ± 95% CI (Student t), listening test {key['test_id']}, {len(args.answers)} answers file(s)\n")
    print(listening.format_table(results), end="")
    if args.out is not None:
        md, js = listening.write_results(results, args.out, key["test_id"])
        print(f"\nwrote {md} and {js}")


def run_demo_command(args: argparse.Namespace) -> None:
    last = {"step": None}

    def progress(p: DemoProgress) -> None:
        left = "estimating" if p.remaining is None else f"about {_minutes(p.remaining)} left"
        end = "\n" if p.step != last["step"] and last["step"] is not None else ""
        last["step"] = p.step
        print(f"{end}\r[{p.index}/{p.count}] {p.step:<9} {p.fraction:4.0%} · {_minutes(p.elapsed)} elapsed · "
              f"{left}   ", end="", file=sys.stderr, flush=True)

    out = args.out or Path(f"{args.world}-demo")
    if args.world == "stampworld":
        metrics = run_stampworld_demo(out, stamps=args.stamps, fast=args.fast, progress=progress)
    elif args.stamps is not None:
        raise ClipsonicError("--stamps is for --world stampworld; drop it, or add --world stampworld")
    else:
        metrics = run_demo(out, fast=args.fast, progress=progress)
    sys.stderr.write("\n")
    h = metrics["headline"]
    fmt = lambda v: "–" if v is None else f"{v:.2f}"  # noqa: E731
    print(f"relevance (chance {metrics['chance']:.3f}): IQ {fmt(h['iq_relevance'])}, ZS {fmt(h['zs_relevance'])}, "
          f"PD {fmt(h['pd_relevance'])}; {metrics['wall_seconds'] / 60:.1f} min")
    print(f"report: {out / 'report.html'}  metrics: {out / 'metrics.json'}")


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
