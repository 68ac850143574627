"""``clipsonic train-prior PAIRS --out RUN``; ``clipsonic prior attach PIPELINE PRIOR``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from clipsonic.cli import examples

FLAG_NAMES = ("preset", "batch_size", "lr", "max_steps", "warmup_steps", "p_uncond", "val_every", "save_every",
              "keep_last", "log_every", "seed", "precision", "guidance_scale", "sample_steps")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train-prior",
        help="train a diffusion prior (CLIP text embedding → image embedding) for the PD mode",
        description="Train our diffusion prior (DALL-E 2 style, conditioned on the pooled CLIP text embedding) on "
                    "image–caption pairs: a preprocessed dataset (labels become captions through --template), "
                    "a CSV with image and caption columns, or a folder of images with NAME.txt captions. "
                    "Checkpoints, metrics.jsonl and TensorBoard logs go to RUN; the finished prior to RUN/prior "
                    "(attach it with `clipsonic prior attach`). Validation prints how close (cosine) the "
                    "prior's samples and the raw text embeddings are to the held-out image embeddings.",
        epilog=examples(
            "clipsonic train-prior data/vgg --out runs/prior-vgg",
            "clipsonic train-prior data/mine --out runs/prior --preset tiny --max-steps 2000 --cpu",
            "clipsonic train-prior captions.csv --out runs/prior --clip-model openai/clip-vit-large-patch14",
            "clipsonic train-prior photos/ --out runs/prior --clip-model ~/models/clip-vit-large-patch14",
            "clipsonic train-prior data/vgg --out runs/prior-vgg --resume --max-steps 40000",
            "accelerate launch --num_processes 2 -m clipsonic train-prior data/vgg --out runs/prior-vgg",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("pairs", type=Path, metavar="PAIRS", help="dataset directory, CSV file, or folder of captioned images")
    p.add_argument("--out", type=Path, required=True, metavar="RUN", help="run directory")
    p.add_argument("--clip-model", help="CLIP to embed images/captions with (required for CSV and folders; "
                                        "default for a dataset: the one it was built with)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
    p.add_argument("--cpu", action="store_true", help="train on the CPU even when a GPU is present")
    p.add_argument("--template", action="append", dest="templates", metavar="T",
                   help="caption template for dataset labels, with {label}; repeatable "
                        "(default: 'the sound of {label}' and 'a photo of {label}')")
    g = p.add_argument_group("training (defaults: clipsonic.prior.PriorTrainConfig)")
    g.add_argument("--preset", choices=["tiny", "small", "base"], help="network size (default small)")
    g.add_argument("--batch-size", type=int, help="pairs per step over all processes (default 256)")
    g.add_argument("--lr", type=float, help="AdamW learning rate (default 3e-4)")
    g.add_argument("--max-steps", type=int, help="steps to train to (default 20000)")
    g.add_argument("--warmup-steps", type=int, help="linear learning-rate warm-up (default 100)")
    g.add_argument("--p-uncond", type=float, help="probability of dropping the text, for guidance (default 0.1)")
    g.add_argument("--val-every", type=int, help="validation every N steps, 0: only at the end (default 1000)")
    g.add_argument("--save-every", type=int, help="checkpoint interval (default 2000)")
    g.add_argument("--keep-last", type=int, help="checkpoints kept (default 2)")
    g.add_argument("--log-every", type=int, help="loss logging interval (default 100)")
    g.add_argument("--seed", type=int, help="seed of weights, batches and noise (default 0)")
    g.add_argument("--precision", choices=["no", "bf16", "fp16"], help="mixed precision (default no)")
    g.add_argument("--guidance-scale", type=float, help="the saved prior's default guidance (default 1.0)")
    g.add_argument("--sample-steps", type=int, help="the saved prior's default sampling steps (default 64)")
    p.set_defaults(func=run_train_prior)

    a = sub.add_parser(
        "prior",
        help="manage a pipeline's prior component (attach)",
        description="`clipsonic prior attach PIPELINE PRIOR` copies a prior into PIPELINE/prior: a train-prior run "
                    "(or its prior/ folder), another pipeline, or a diffusers PriorTransformer such as Karlo's "
                    "(kakaobrain/karlo-v1-alpha, ViT-L/14). A prior made for another CLIP than the pipeline's is refused.",
        epilog=examples(
            "clipsonic prior attach runs/music/pipeline runs/prior-music",
            "clipsonic prior attach runs/vgg/pipeline ~/models/karlo-v1-alpha --clip-model openai/clip-vit-large-patch14",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    a.add_argument("action", choices=["attach"], help="what to do")
    a.add_argument("pipeline", type=Path, metavar="PIPELINE", help="pipeline directory")
    a.add_argument("prior", type=Path, metavar="PRIOR", help="prior directory, train-prior run, or Karlo download")
    a.add_argument("--clip-model", help="the CLIP a raw diffusers prior was trained with, as the pipeline names it "
                                        "(default openai/clip-vit-large-patch14)")
    a.set_defaults(func=run_prior)


def run_train_prior(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from clipsonic.prior.train import run_config, train_prior

    flags = {name: getattr(args, name) for name in FLAG_NAMES if getattr(args, name) is not None}
    if args.templates:
        flags["templates"] = tuple(args.templates)
    config = run_config(args.out, flags, args.resume)  # refuses a bad resume before any slow work
    bar = tqdm(total=config.max_steps, unit="step", dynamic_ncols=True, file=sys.stderr,
               disable=os.environ.get("RANK", "0") != "0")  # one bar under a multi-process launcher

    def progress(step: int, total: int, last: dict) -> None:
        bar.total = total
        if last:
            bar.set_postfix(loss=f"{last['loss']:.4f}", refresh=False)
        bar.update(step - bar.n)  # tqdm rate-limits its redraws

    try:
        result = train_prior(args.pairs, args.out, config, resume=args.resume, clip_model=args.clip_model,
                             cpu=args.cpu, progress=progress)
    finally:
        bar.close()
    m = result.metrics
    if not result.main_process:  # under a launcher, one process reports
        return 0
    if m:
        print(f"{result.prior_dir}: {result.steps} steps; held-out mean cosine to the image embedding: "
              f"text {m['cos_zs']:.3f} (zs), shift {m['cos_shift']:.3f}, prior {m['cos_prior']:.3f}")
    else:
        print(f"{result.prior_dir}: {result.steps} steps (no held-out pairs to validate on)")
    return 0


def run_prior(args: argparse.Namespace) -> int:
    from clipsonic.prior import attach_prior

    prior = attach_prior(args.pipeline, args.prior, clip_model=args.clip_model)
    print(f"attached {prior.type_name} prior ({prior.clip.model}, {prior.dim}-d) to {args.pipeline / 'prior'}")
    return 0
