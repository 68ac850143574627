"""``clipsonic mel`` and ``clipsonic resynth``: look at and listen to what the front end keeps."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from clipsonic.cli import examples

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "mel",
        help="plot the log-mel spectrogram of an audio or video file",
        description="Plot the paper's log-mel (16 kHz, 64 bands, hop 512) of a file's sound.",
        epilog=examples("clipsonic mel clip.mp4 -o mel.png", "clipsonic mel song.flac --start 30 --duration 4.096 -o mel.png"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_input_args(p)
    p.add_argument("-o", "--output", required=True, type=Path, help="image file to write (png, pdf, svg)")
    p.set_defaults(func=run_mel)

    p = sub.add_parser(
        "resynth",
        help="resynthesise a file's sound from its mel with Griffin-Lim",
        description="Mel → Griffin-Lim, so you hear what the front end keeps (no trained vocoder needed).",
        epilog=examples("clipsonic resynth clip.mp4 -o clip_gl.wav", "clipsonic resynth speech.wav --iters 100 -o out.flac"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_input_args(p)
    p.add_argument("-o", "--output", required=True, type=Path, help="audio file to write (wav or flac)")
    p.add_argument("--iters", type=int, default=64, help="Griffin-Lim iterations (default: 64)")
    p.set_defaults(func=run_resynth)


def _add_input_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", type=Path, help="audio or video file")
    p.add_argument("--start", type=float, default=None, help="start time in seconds")
    p.add_argument("--duration", type=float, default=None, help="duration in seconds")


def _load_mel(args):
    import torch

    from clipsonic.audio import MelConfig, mel_spectrogram
    from clipsonic.media import load_audio

    config = MelConfig()
    audio = load_audio(args.input, sample_rate=config.sample_rate, start=args.start, duration=args.duration)
    return config, mel_spectrogram(torch.from_numpy(audio), config)


def run_mel(args) -> None:
    from clipsonic.plotting import save_mel_image

    config, logmel = _load_mel(args)
    save_mel_image(logmel.numpy(), config, args.output, title=args.input.name)
    log.info("wrote %s (%d mel frames)", args.output, logmel.shape[-1])


def run_resynth(args) -> None:
    from clipsonic.audio import griffin_lim
    from clipsonic.media import save_audio

    config, logmel = _load_mel(args)
    wav = griffin_lim(logmel, config, n_iter=args.iters)
    save_audio(args.output, wav.numpy(), config.sample_rate)
    log.info("wrote %s (%.2f s)", args.output, wav.shape[-1] / config.sample_rate)
