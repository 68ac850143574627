"""``clipsonic train-vocoder``, ``clipsonic vocode`` and ``clipsonic vocoder attach|export``."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from clipsonic.cli import examples

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    _register_train(sub)
    _register_vocode(sub)
    _register_vocoder_group(sub)


def _register_train(sub: argparse._SubParsersAction) -> None:
    from clipsonic.vocoder.bigvgan import VOCODER_PRESETS
    from clipsonic.vocoder.discriminators import DISCRIMINATOR_KINDS

    p = sub.add_parser(
        "train-vocoder",
        help="train a BigVGAN vocoder on the paper's 16 kHz / 64-band mels",
        description=(
            "Train BigVGAN (generator + bigvgan's discriminators and losses) on a dataset directory "
            "built with `preprocess --keep-audio`, or on a folder of audio files (wav/flac/mp3/ogg). "
            "Writes DIR/checkpoints/, DIR/logs/ (TensorBoard) and, at the end, DIR/vocoder/ — the "
            "inference directory that `vocode --vocoder` and `vocoder attach` take (DIR works too). "
            "Multi-GPU: `accelerate launch -m clipsonic train-vocoder …`."
        ),
        epilog=examples(
            "clipsonic train-vocoder data/vgg --out runs/vocoder --preset base --batch-size 32",
            "clipsonic train-vocoder ~/sounds --out runs/voc-tiny --preset tiny --max-steps 2000",
            "clipsonic train-vocoder data/vgg --out runs/vocoder --resume        # after a crash or kill",
            "tensorboard --logdir runs/vocoder/logs",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("data", type=Path, help="dataset directory (with flac audio) or folder of audio files")
    p.add_argument("--out", required=True, type=Path, help="run directory to create (or resume)")
    p.add_argument("--preset", choices=sorted(VOCODER_PRESETS), default="base",
                   help="generator size: paper (~120M), base (~14M), tiny (~0.1M, CPU); default base")
    p.add_argument("--max-steps", type=int, help="total training steps (default 500000; tiny: same)")
    p.add_argument("--batch-size", type=int, help="segments per step, over all processes' shares (per process)")
    p.add_argument("--segment-size", type=int, help="samples per training segment, a multiple of 512 (default 8192)")
    p.add_argument("--lr", type=float, help="AdamW learning rate (default 1e-4; tiny 1e-3)")
    p.add_argument("--save-every", type=int, help="checkpoint every N steps (default 5000)")
    p.add_argument("--val-every", type=int, help="validation mel-L1 + audio examples every N steps (default 1000)")
    p.add_argument("--keep-last", type=int, help="checkpoints to keep (default 3)")
    p.add_argument("--seed", type=int, help="seed of the initial weights and of the segment draws (default 0)")
    p.add_argument("--precision", choices=["no", "bf16", "fp16"], help="mixed precision (fp16 needs a GPU)")
    p.add_argument("--discriminator", choices=DISCRIMINATOR_KINDS,
                   help="second discriminator beside MPD: mrd (default), mbd or cqtd (7 octaves, below 8 kHz)")
    p.add_argument("--num-workers", type=int, help="data-loading worker processes")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.set_defaults(func=run_train)


def _register_vocode(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "vocode",
        help="resynthesise a file's sound from its mel with a vocoder",
        description=(
            "Audio or video in → 16 kHz log-mel → vocoder → audio out: the paper's mel-reconstruction "
            "row, and a way to hear a vocoder. The output lasts the input's length rounded down to "
            "whole hops (512 samples)."
        ),
        epilog=examples(
            "clipsonic vocode clip.mp4 -o clip_bigvgan.wav --vocoder runs/vocoder",
            "clipsonic vocode speech.flac -o speech_gl.wav --griffin-lim",
            "clipsonic vocode song.wav --start 30 --duration 4.096 -o out.wav --vocoder pipe/vocoder",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("input", type=Path, help="audio or video file")
    p.add_argument("-o", "--output", required=True, type=Path, help="audio file to write (.wav, .flac)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--vocoder", type=Path, help="vocoder directory (or a train-vocoder run directory)")
    which.add_argument("--griffin-lim", action="store_true", help="use Griffin-Lim (no trained vocoder needed)")
    p.add_argument("--iters", type=int, default=None, help="Griffin-Lim iterations (default 32)")
    p.add_argument("--start", type=float, default=None, help="start time in seconds")
    p.add_argument("--duration", type=float, default=None, help="duration in seconds")
    p.add_argument("--device", default="cpu", help="torch device for the vocoder (default cpu)")
    p.set_defaults(func=run_vocode)


def _register_vocoder_group(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("vocoder", help="manage vocoder directories (attach to a pipeline, export a checkpoint)",
                       description="Manage vocoder directories.",
                       epilog=examples("clipsonic vocoder attach runs/pipeline runs/vocoder",
                                       "clipsonic vocoder export runs/vocoder"),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    group = p.add_subparsers(dest="vocoder_command", metavar="ACTION", required=True)
    a = group.add_parser(
        "attach", help="copy a vocoder into a pipeline directory as its vocoder/ component",
        description="Copy VOCODER (a vocoder directory or a train-vocoder run) into PIPELINE/vocoder/, "
                    "atomically, after checking it loads and fits the pipeline's mel config.",
        epilog=examples("clipsonic vocoder attach runs/pipeline runs/vocoder",
                        "clipsonic vocoder attach runs/pipeline runs/vocoder/vocoder"),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    a.add_argument("pipeline", type=Path, help="pipeline directory (has model_index.json)")
    a.add_argument("vocoder", type=Path, help="vocoder directory or train-vocoder run directory")
    a.set_defaults(func=run_attach)
    e = group.add_parser(
        "export", help="write RUN/vocoder/ from a training checkpoint (e.g. of a stopped run)",
        description="Turn a train-vocoder checkpoint (default: the newest) into an inference directory.",
        epilog=examples("clipsonic vocoder export runs/vocoder",
                        "clipsonic vocoder export runs/vocoder --checkpoint runs/vocoder/checkpoints/step-00050000 -o voc50k"),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    e.add_argument("run", type=Path, help="train-vocoder run directory")
    e.add_argument("--checkpoint", type=Path, default=None, help="checkpoint directory (default: newest)")
    e.add_argument("-o", "--output", type=Path, default=None, help="where to write (default RUN/vocoder)")
    e.set_defaults(func=run_export)


def run_train(args) -> None:
    from tqdm import tqdm

    from clipsonic.vocoder.discriminators import DiscriminatorConfig
    from clipsonic.vocoder.train import TRAIN_PRESETS, train_config_for_preset, train_vocoder

    disc = None
    if args.discriminator:
        base = TRAIN_PRESETS.get(args.preset, {}).get("discriminator", DiscriminatorConfig())
        disc = base.replace(kind=args.discriminator)
    config = train_config_for_preset(
        args.preset, max_steps=args.max_steps, batch_size=args.batch_size, segment_size=args.segment_size,
        lr=args.lr, save_every=args.save_every, val_every=args.val_every, keep_last=args.keep_last,
        seed=args.seed, precision=args.precision, discriminator=disc, num_workers=args.num_workers)
    bar = tqdm(total=config.max_steps, unit="step", dynamic_ncols=True)

    def progress(step: int, total: int, logs: dict[str, float]) -> None:
        bar.n = step
        post = {"mel_l1": f"{logs['mel_l1']:.3f}"}
        if "val_mel_l1" in logs:
            post["val"] = f"{logs['val_mel_l1']:.3f}"
        bar.set_postfix(post, refresh=True)

    try:
        result = train_vocoder(args.data, args.out, config, resume=args.resume, callback=progress)
    finally:
        bar.close()
    if result.val_history:
        (s0, v0), (s1, v1) = result.val_history[0], result.val_history[-1]
        log.info("validation mel-L1 %.4f (step %d) → %.4f (step %d)", v0, s0, v1, s1)
    log.info("vocoder written to %s", result.vocoder_dir)


def run_vocode(args) -> None:
    from clipsonic.vocoder import GriffinLimConfig, GriffinLimVocoder, load_vocoder, vocode_file

    if args.griffin_lim:
        gl = GriffinLimConfig() if args.iters is None else GriffinLimConfig(n_iter=args.iters)
        vocoder = GriffinLimVocoder(config=gl)
    else:
        vocoder = load_vocoder(args.vocoder, device=args.device)
    seconds = vocode_file(args.input, args.output, vocoder, start=args.start, duration=args.duration)
    log.info("wrote %s (%.3f s at %d Hz, %s)", args.output, seconds, vocoder.sample_rate, vocoder.type_name)


def run_attach(args) -> None:
    from clipsonic.vocoder import attach_vocoder

    target = attach_vocoder(args.pipeline, args.vocoder)
    log.info("vocoder attached at %s", target)


def run_export(args) -> None:
    from clipsonic.vocoder import export_checkpoint

    target = export_checkpoint(args.run, args.checkpoint, args.output)
    log.info("vocoder written to %s", target)
