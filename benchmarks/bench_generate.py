"""Seconds per generated clip: samplers × MelUNet presets × batched or two-pass guidance.

Each row samples ``[B, 1, 64, frames]`` mels (default B = 1 and 8, 128 frames = one 4.096-s clip)
with classifier-free guidance (w = 1.5) from a random-weight UNet conditioned on 768-d vectors
(ViT-L/14). "batched" guidance is clipsonic's: one forward of 2B per step; "two-pass" runs the
conditional and unconditional halves as two forwards of B (what a pipeline without batching does).
A sampler's cost is its number of network calls, so long chains (ddpm-1000) are timed over
``--max-steps`` steps and scaled to the full chain; the table says which rows are extrapolated.
Griffin-Lim (the vocoder fallback) is timed once per clip length.

    .venv/bin/python benchmarks/bench_generate.py                       # CPU, tiny + small
    .venv/bin/python benchmarks/bench_generate.py --device cuda --presets tiny small paper --max-steps 1000
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from torch import nn

from clipsonic.audio import MelConfig
from clipsonic.diffusion import DiffusionConfig, GaussianDiffusion
from clipsonic.models import MelUNet

SAMPLERS = (("ddpm", 1000), ("ddim", 50), ("dpmpp-2m", 25))


class TwoPass(nn.Module):
    """Runs the guided 2B batch as two forwards of B (conditional half, then unconditional half)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x, t, cond, drop_cond=None):
        if drop_cond is None or x.shape[0] % 2 or not bool(drop_cond.any()) or bool(drop_cond.all()):
            return self.model(x, t, cond, drop_cond)
        b = x.shape[0] // 2
        return torch.cat([self.model(x[:b], t[:b], cond[:b], drop_cond[:b]),
                          self.model(x[b:], t[b:], cond[b:], drop_cond[b:])])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_sampler(model: nn.Module, diffusion: GaussianDiffusion, sampler: str, steps: int, batch: int, frames: int,
                 device: torch.device, max_steps: int, dtype: torch.dtype | None) -> tuple[float, bool]:
    """(seconds per clip for the full ``steps`` chain, extrapolated?)."""
    run = min(steps, max_steps)
    cond = torch.nn.functional.normalize(torch.randn(batch, 768, device=device), dim=-1)
    shape = (batch, 1, 64, frames)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else torch.autocast(device.type, enabled=False)
    with autocast:
        diffusion.sample(model, shape, cond, sampler=sampler, steps=2, guidance_scale=1.5)  # warm-up
        _sync(device)
        start = time.perf_counter()
        diffusion.sample(model, shape, cond, sampler=sampler, steps=run, guidance_scale=1.5,
                         generator=torch.Generator().manual_seed(0))
        _sync(device)
    elapsed = time.perf_counter() - start
    return elapsed * steps / run / batch, run < steps


def time_griffin_lim(frames: int) -> float:
    from clipsonic.vocoder import GriffinLimVocoder

    vocoder = GriffinLimVocoder(MelConfig())
    logmel = torch.randn(1, 64, frames) - 4
    vocoder(logmel)
    start = time.perf_counter()
    vocoder(logmel)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--frames", type=int, default=128)
    parser.add_argument("--max-steps", type=int, default=25, help="steps actually run per row (longer chains are scaled)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = None if args.dtype == "float32" else getattr(torch, args.dtype)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__} on {name}; load average {os.getloadavg()[0]:.1f}; {args.dtype}; "
          f"mel [B, 1, 64, {args.frames}] = {args.frames * 512 / 16000:.3f} s; guidance 1.5; "
          f"chains over {args.max_steps} steps are extrapolated (*)")
    print(f"{'preset':<7} {'params':>7} {'sampler':<13} {'guidance':<9} " + " ".join(f"{f'B={b} s/clip':>13}" for b in args.batches))
    diffusion = GaussianDiffusion(DiffusionConfig())
    for preset in args.presets:
        torch.manual_seed(0)
        unet = MelUNet.from_preset(preset, cond_dim=768).to(device).eval().requires_grad_(False)
        for p in unet.parameters():  # zero-init layers would make some kernels trivially cheap
            if not p.detach().any():
                torch.nn.init.normal_(p, std=0.02)
        params = f"{unet.num_parameters() / 1e6:.1f}M"
        for sampler, steps in SAMPLERS:
            for label, model in (("batched", unet), ("two-pass", TwoPass(unet))):
                cells = []
                for batch in args.batches:
                    seconds, scaled = time_sampler(model, diffusion, sampler, steps, batch, args.frames, device,
                                                   args.max_steps, dtype)
                    cells.append(f"{seconds:>12.3f}{'*' if scaled else ' '}")
                print(f"{preset:<7} {params:>7} {f'{sampler}-{steps}':<13} {label:<9} " + " ".join(cells), flush=True)
    print(f"griffin-lim (32 iterations, CPU) per {args.frames * 512 / 16000:.3f}-s clip: {time_griffin_lim(args.frames):.3f} s")


if __name__ == "__main__":
    main()
