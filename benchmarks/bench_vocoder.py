"""Vocoder speed as a real-time factor: seconds of audio synthesised per second of wall time.

Each row turns a random log-mel ``[B, 64, frames]`` (default 128 frames = one 4.096-s clip at
16 kHz, hop 512) into audio through the :class:`~clipsonic.vocoder.base.Vocoder` call the
pipeline uses: BigVGAN presets with random weights (speed does not depend on training; weight
norm is folded away as at inference) and Griffin-Lim at its default iterations. RTF > 1 is
faster than real time; RTF = B · clip seconds / wall seconds. Each cell is timed after a
warm-up call on a short mel of the same batch size; ``--repeats`` > 1 reports the fastest call.
CUDA rows are added when a GPU is visible (``--devices`` picks).

    .venv/bin/python benchmarks/bench_vocoder.py                               # CPU, 2 threads, paper/base/tiny + GL
    .venv/bin/python benchmarks/bench_vocoder.py --threads 1 --presets base tiny --batches 1
    .venv/bin/python benchmarks/bench_vocoder.py --devices cuda --repeats 5     # on a GPU machine
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from clipsonic.audio import MelConfig
from clipsonic.vocoder import BigVGANVocoder, GriffinLimConfig, GriffinLimVocoder, Vocoder


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_vocoder(vocoder: Vocoder, batch: int, frames: int, device: torch.device, repeats: int) -> float:
    """Fastest wall seconds of ``vocoder(logmel)`` for a ``[batch, 64, frames]`` log-mel on ``device``."""
    gen = torch.Generator().manual_seed(0)
    # log-mels of quiet-to-loud sound sit around -11..2 (natural-log magnitudes)
    logmel = (torch.randn(batch, 64, frames, generator=gen) - 4).to(device)
    vocoder(logmel[..., :16])  # warm-up: allocator, kernels, cuDNN autotuning
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        vocoder(logmel)
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def vocoders(presets: list[str], device: torch.device):
    """(name, parameters, vocoder) for each BigVGAN preset, then Griffin-Lim."""
    for preset in presets:
        torch.manual_seed(0)
        vocoder = BigVGANVocoder.from_preset(preset).to(device)
        yield f"bigvgan-{preset}", f"{sum(p.numel() for p in vocoder.generator.parameters()) / 1e6:.1f}M", vocoder
    gl = GriffinLimConfig()
    yield f"griffin-lim-{gl.n_iter}", "-", GriffinLimVocoder(MelConfig(), gl).to(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["paper", "base", "tiny"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--frames", type=int, default=128, help="mel frames per clip (128 = 4.096 s)")
    parser.add_argument("--devices", nargs="+", default=["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=1, help="timed calls per cell (the fastest is kept)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    mel = MelConfig()
    clip_seconds = args.frames * mel.hop_length / mel.sample_rate
    print(f"torch {torch.__version__}; CPU threads {torch.get_num_threads()}; load average {os.getloadavg()[0]:.1f}; "
          f"mel [B, {mel.n_mels}, {args.frames}] = {clip_seconds:.3f} s at {mel.sample_rate} Hz; "
          f"fastest of {args.repeats} call(s)")
    print(f"{'vocoder':<16} {'params':>7} {'device':<22} {'B':>3} {'wall s':>9} {'RTF (x real time)':>18}")
    for name in args.devices:
        device = torch.device(name)
        where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} thr)"
        for label, params, vocoder in vocoders(args.presets, device):
            for batch in args.batches:
                seconds = time_vocoder(vocoder, batch, args.frames, device, args.repeats)
                print(f"{label:<16} {params:>7} {where[:22]:<22} {batch:>3} {seconds:>9.3f} "
                      f"{batch * clip_seconds / seconds:>18.2f}", flush=True)
            del vocoder
            if device.type == "cuda":
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
