"""``clipsonic distill``: a pipeline → a few-step pipeline with its guidance folded in (clipsonic.train.distill)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from clipsonic.cli import options
from clipsonic.cli.train import STOPPING
from clipsonic.pipeline.paths import BUILTIN_DIR
from clipsonic.train.distill import DistillTrainConfig, distill
from clipsonic.train.stop import TrainingStopped

FLAGS = ("steps", "teacher_steps", "stage_steps", "guidance_scale", "guidance_rescale", "lr", "batch_size", "seed",
         "max_time", "save_every", "keep_last", "log_every", "num_workers", "precision", "progress_every")


def register(sub: argparse._SubParsersAction) -> None:
    p = options.command(
        sub, "distill", run_distill, "make a pipeline few-step: K one-pass steps with the guidance folded in",
        "Guided progressive distillation (Salimans & Ho 2022; Meng et al. 2023): the pipeline's network with "
        "classifier-free guidance at --guidance-scale, sampled with --teacher-steps DDIM steps, teaches a student to "
        "do in one step what it does in two; the student teaches the next, halving the steps down to --steps, each in "
        "--stage-steps training steps on the dataset's train split (a dataset of the pipeline's CLIP). RUN_DIR/pipeline "
        "is then a complete pipeline (the input's CLIP, prior, stats and vocoder) that generates with --steps "
        "conditional passes per clip instead of two per step; it runs only the w it was distilled at. Each stage's "
        "student is a checkpoint: `clipsonic export RUN_DIR --step S --out DIR` makes it a pipeline." + STOPPING,
        "clipsonic distill --model runs/music/pipeline --data data/music --out runs/music-4   # 4 steps",
        "clipsonic distill --data data/sw --out runs/sw-1 --steps 1 --teacher-steps 16 --stage-steps 500 --threads 1",
        "clipsonic export runs/sw-1 --step 1000 --out pipelines/sw-4   # the 4-step student of that run",
        "clipsonic generate --model runs/music-4/pipeline --text 'a violin' -o violin.wav")
    p.add_argument("--model", type=options.model, metavar="DIR",
                   help="the pipeline directory to distil, or builtin:NAME (default: the built-in StampWorld model)")
    p.add_argument("--data", type=Path, required=True, metavar="DATA", help="dataset directory (clipsonic preprocess)")
    p.add_argument("--out", type=Path, required=True, metavar="RUN_DIR", help="run directory")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
    p.add_argument("--restart", action="store_true", help="DELETE the run in --out and start over")
    options.add_config_flags(p, DistillTrainConfig, "train", only=FLAGS)


def run_distill(args: argparse.Namespace) -> int:
    model = args.model if args.model is not None else BUILTIN_DIR
    try:
        with options.progress_bar(keys=("loss", "student_steps")) as bar:
            run = distill(model, args.data, args.out, options.overrides(args), resume=args.resume,
                          restart=args.restart, progress=bar if sys.stderr.isatty() else None)
    except TrainingStopped as stop:
        print(f"clipsonic distill: {stop}", file=sys.stderr)
        return 128 + stop.signum
    print(f"run: {run}\npipeline: {run / 'pipeline'}")
    return 0
