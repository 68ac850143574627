"""``clipsonic train DATA_DIR --out RUN_DIR``; ``clipsonic train export RUN_DIR``."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from clipsonic.cli import examples


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train the mel diffusion model on a preprocessed dataset (or export a run)",
        description="Train the CLIP-conditioned mel diffusion model (Improved DDPM) on a dataset directory "
                    "made by `clipsonic preprocess`, on CPU, one GPU, or many (`accelerate launch`). "
                    "Checkpoints, metrics.jsonl, TensorBoard logs and samples go to RUN_DIR; at the end the "
                    "EMA weights are exported as a pipeline directory (RUN_DIR/pipeline).\n\n"
                    "`clipsonic train export RUN_DIR [--out DIR] [--step N]` exports a run on demand.\n\n"
                    "Several processes on a machine without GPUs: `accelerate launch --multi_gpu --num_processes N` "
                    "or torchrun (accelerate's --cpu flag alone starts a single process unless given an MPI hostfile).",
        epilog=examples(
            "clipsonic train data/music --out runs/music                      # the paper's settings (GPU)",
            "clipsonic train data/mine --out runs/cpu --preset tiny --batch-size 16 --max-steps 2000 "
            "--prediction v --lr 1e-3",
            "clipsonic train data/music --out runs/music --resume              # continue from the last checkpoint",
            "clipsonic train data/music --out runs/b --config runs/music/config.json   # reproduce a run",
            "accelerate launch --num_processes 2 -m clipsonic train data/vgg --out runs/vgg --precision bf16",
            "accelerate launch --multi_gpu --num_processes 2 -m clipsonic train data/x --out runs/x --preset tiny"
            "   # 2 CPU processes (gloo)",
            "clipsonic train export runs/music --out pipelines/music --step 200000",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("data", metavar="DATA_DIR", help="dataset directory (from `clipsonic preprocess`), or 'export'")
    p.add_argument("run", nargs="?", type=Path, metavar="RUN_DIR", help="(export only) the run directory to export")
    p.add_argument("--out", type=Path, help="run directory (train); pipeline directory (export, default RUN_DIR/pipeline)")
    p.add_argument("--config", type=Path, help="JSON config: a run's config.json or a partial "
                                                "{train, unet, diffusion} file; flags override it")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its newest readable checkpoint")
    g = p.add_argument_group("training (defaults: clipsonic.train.TrainConfig)")
    g.add_argument("--preset", help="network size: paper | small | tiny (default paper)")
    g.add_argument("--batch-size", type=int, help="clips per process and micro-step (default 64)")
    g.add_argument("--lr", type=float, help="AdamW learning rate (default 1e-4)")
    g.add_argument("--max-steps", type=int, help="optimizer steps to train to (default 200000)")
    g.add_argument("--grad-accum", type=int, help="micro-batches per optimizer step (default 1)")
    g.add_argument("--precision", choices=["no", "bf16", "fp16"], help="mixed precision (default no)")
    g.add_argument("--ema", type=float, help="EMA decay of the exported weights (default 0.9999, warmed up)")
    g.add_argument("--warmup-steps", type=int, help="linear learning-rate warm-up (default 0)")
    g.add_argument("--save-every", type=int, help="checkpoint interval in steps (default 5000)")
    g.add_argument("--keep-last", type=int, help="checkpoints kept (default 3)")
    g.add_argument("--log-every", type=int, help="scalar logging interval (default 50)")
    g.add_argument("--sample-every", type=int, help="sample a mel + Griffin-Lim audio every N steps (0: never)")
    g.add_argument("--val-every", type=int, help="validation loss on the test split every N steps (0: never)")
    g.add_argument("--seed", type=int, help="seed of initial weights, data order and noise (default 0)")
    g.add_argument("--num-workers", type=int, help="data-loading processes per training process (default 2)")
    g.add_argument("--prediction", choices=["epsilon", "v", "x0"], help="what the network predicts: epsilon (the paper's, default) or v, which "
                                                             "learns much faster for CPU-sized models (SonicWorld, 400 steps: "
                                                             "IQ relevance 1.00 vs 0.71; benchmarks/bench_recipe.py)")
    g.add_argument("--no-export", action="store_true", help="do not export RUN_DIR/pipeline at the end of this invocation")
    e = p.add_argument_group("export")
    e.add_argument("--step", type=int, help="(export) the checkpoint to export (default: newest readable)")
    e.add_argument("--data", dest="stats_data", type=Path,
                   help="(export) dataset for the statistics (default: the run's)")
    p.add_argument("--debug-weight-hashes", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=run_train)


FLAG_NAMES = ("preset", "batch_size", "lr", "max_steps", "grad_accum", "precision", "ema", "warmup_steps",
              "save_every", "keep_last", "log_every", "sample_every", "val_every", "seed", "num_workers", "prediction")


def run_train(args: argparse.Namespace) -> int:
    from clipsonic.errors import ClipsonicError

    if args.data == "export":
        return _run_export(args)
    if args.run is not None:
        raise ClipsonicError(f"unexpected argument {args.run}; the run directory is given with --out")
    if args.out is None:
        raise ClipsonicError("--out RUN_DIR is required: where checkpoints, logs and the pipeline go")
    from clipsonic.train import read_config_file, train

    flags = {name: getattr(args, name) for name in FLAG_NAMES}
    config_file = read_config_file(args.config) if args.config is not None else None
    with _Progress() as progress:
        run_dir = train(args.data, args.out, config_file=config_file, flags=flags, resume=args.resume,
                        progress=progress, export=False if args.no_export else None,
                        weight_hashes=args.debug_weight_hashes)
    if _is_main_process():
        pipeline = run_dir / "pipeline"
        print(f"run: {run_dir}" + (f"\npipeline: {pipeline}" if pipeline.is_dir() else ""))
    return 0


def _run_export(args: argparse.Namespace) -> int:
    from clipsonic.errors import ClipsonicError
    from clipsonic.train import export_run

    if args.run is None:
        raise ClipsonicError("usage: clipsonic train export RUN_DIR [--out DIR] [--step N]")
    out = export_run(args.run, out=args.out, step=args.step, data_dir=args.stats_data)
    print(f"pipeline: {out}")
    return 0


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


class _Progress:
    """A tqdm bar over optimizer steps (main process only), fed by the training loop's callback."""

    def __enter__(self) -> _Progress:
        self.bar = None
        return self

    def __call__(self, step: int, total: int, logged: dict[str, float] | None) -> None:
        if not _is_main_process():
            return
        if self.bar is None:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=step - 1, unit="step", dynamic_ncols=True)
        self.bar.update(step - self.bar.n)
        if logged is not None and logged.get("loss") is not None:
            self.bar.set_postfix(loss=f"{logged['loss']:.4f}", samples_s=f"{logged['samples_per_s']:.1f}")

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()
