"""Seconds per generated clip: samplers × MelUNet presets × batched or two-pass guidance.

Each row samples ``[B, 1, 64, frames]`` mels (default B = 1 and 8, 128 frames = one 4.096-s clip)
with classifier-free guidance (w = 1.5) from a random-weight UNet conditioned on 768-d vectors
(ViT-L/14). "batched" guidance is clipsonic's: one forward of 2B per step; "two-pass" runs the
conditional and unconditional halves as two forwards of B (what a pipeline without batching does).
A sampler's cost is its number of network calls, so long chains (ddpm-1000) are timed over
``--max-steps`` steps and scaled to the full chain; the table says which rows are extrapolated.
Griffin-Lim (the vocoder fallback) is timed once per clip length. ``--model`` times a trained UNet
(its own condition size) instead of the random presets.

``--end-to-end LABEL=SRC …`` times whole ``clipsonic generate`` commands instead (start-up, CLIP, prior, sampler,
vocoder, writing), with the built-in model, for 1.024-s and 4.096-s clips, on an idle machine and beside one process
spinning on a core; each SRC is a source tree put first on PYTHONPATH, so one run compares two versions (e.g. a
``git archive`` of an older commit). Relevance: the world's oracle on one clip per SonicWorld concept (pd mode).

    .venv/bin/python benchmarks/bench_generate.py                       # CPU, tiny + small
    .venv/bin/python benchmarks/bench_generate.py --model src/clipsonic/builtin/sonicworld/unet --threads 1 \
        --batches 1 --samplers ddpm:1000 ddim:25 dpmpp-2m:10 dpmpp-3m:8 unipc:8 --guidance batched
    mkdir /tmp/before && git archive cfc0251 | tar -x -C /tmp/before
    .venv/bin/python benchmarks/bench_generate.py --end-to-end before=/tmp/before/src after=src
    .venv/bin/python benchmarks/bench_generate.py --device cuda --presets tiny small paper --max-steps 1000
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from torch import nn

from clipsonic.audio import MelConfig
from clipsonic.diffusion import DiffusionConfig, GaussianDiffusion
from clipsonic.models import MelUNet

SAMPLERS = ("ddpm:1000", "ddim:50", "dpmpp-2m:25", "dpmpp-3m:8", "unipc:8")


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
    cond_dim = model.model.config.cond_dim if isinstance(model, TwoPass) else model.config.cond_dim
    cond = torch.nn.functional.normalize(torch.randn(batch, cond_dim, device=device), dim=-1)
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


def load_unet(name: str, pretrained: bool) -> MelUNet:
    """A trained UNet from directory ``name``, or preset ``name`` with random weights (768-d condition: ViT-L/14)."""
    if pretrained:
        return MelUNet.from_pretrained(name).eval().requires_grad_(False)
    torch.manual_seed(0)
    unet = MelUNet.from_preset(name, cond_dim=768).eval().requires_grad_(False)
    for p in unet.parameters():  # zero-init layers would make some kernels trivially cheap
        if not p.detach().any():
            torch.nn.init.normal_(p, std=0.02)
    return unet


# --- end to end: `clipsonic generate` as typed ----------------------------------------------------------------------

E2E_PROMPT = "the red circle that is humming"


def _generate(src: str, args: list[str]) -> None:
    """`clipsonic generate ARGS` with the built-in SonicWorld model (the one the oracle judges) from the source tree
    ``src``, with the machine's default threads."""
    env = {key: value for key, value in os.environ.items() if key not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    subprocess.run([sys.executable, "-m", "clipsonic", "-q", "generate", "--model", "builtin:sonicworld", *args],
                   env={**env, "PYTHONPATH": src},
                   check=True, capture_output=True)


def time_generate(src: str, seconds: float, repeats: int) -> float:
    """Median wall seconds of `clipsonic generate --text … --seconds S` run from the source tree ``src``."""
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeats):
            start = time.perf_counter()
            _generate(src, ["--text", E2E_PROMPT, "--seconds", str(seconds), "--seed", "0", "-o", f"{tmp}/{i}.wav"])
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def relevance(src: str, seconds: float) -> float:
    """Fraction of the 8 SonicWorld concepts (one built-in prompt each) the world's oracle hears in the clips."""
    from clipsonic.sonicworld.oracle import OracleClassifier
    from clipsonic.sonicworld.world import CONCEPTS

    prompts = [f"the {c.nouns[0]} that is {c.sounds[0]}" for c in CONCEPTS]
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "prompts.txt").write_text("\n".join(prompts) + "\n")
        _generate(src, ["--prompts", f"{tmp}/prompts.txt", "--seconds", str(seconds), "--seed", "0", "-o", f"{tmp}/out"])
        wavs = sorted(Path(tmp, "out").glob("*.wav"))
        audio = np.stack([sf.read(w, dtype="float32")[0] for w in wavs])
    heard = OracleClassifier().classify(audio, 16000)
    return float(np.mean([h == c.name for h, c in zip(heard, CONCEPTS, strict=True)]))


@contextlib.contextmanager
def busy(on: bool):
    """One process spinning on a core beside the measured command (a browser, a second job, the tests)."""
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if on else None
    try:
        yield
    finally:
        if proc:
            proc.kill()
            proc.wait()


def end_to_end(trees: list[tuple[str, str]], repeats: int) -> None:
    print("| tree | clip | idle | beside one busy process | relevance (8 concepts, pd) |")
    print("| --- | --- | ---: | ---: | ---: |")
    for seconds in (1.024, 4.096):
        for label, src in trees:
            cells = []
            for on in (False, True):
                with busy(on):
                    cells.append(f"{time_generate(src, seconds, repeats):.2f} s")
            print(f"| {label} | {seconds} s | {cells[0]} | {cells[1]} | {relevance(src, seconds):.3f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--frames", type=int, default=128)
    parser.add_argument("--max-steps", type=int, default=25, help="steps actually run per row (longer chains are scaled)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--samplers", nargs="+", default=list(SAMPLERS), help="rows as SAMPLER:STEPS")
    parser.add_argument("--guidance", nargs="+", choices=["batched", "two-pass"], default=["batched", "two-pass"])
    parser.add_argument("--model", help="a trained MelUNet directory (e.g. the built-in model's unet/) instead of presets")
    parser.add_argument("--end-to-end", nargs="+", metavar="LABEL=SRC", help="time `clipsonic generate` per source tree")
    parser.add_argument("--repeats", type=int, default=3, help="--end-to-end: runs per cell (median)")
    args = parser.parse_args()
    if args.end_to_end:
        return end_to_end([tuple(tree.split("=", 1)) for tree in args.end_to_end], args.repeats)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = None if args.dtype == "float32" else getattr(torch, args.dtype)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__} on {name}; load average {os.getloadavg()[0]:.1f}; {args.dtype}; "
          f"mel [B, 1, 64, {args.frames}] = {args.frames * 512 / 16000:.3f} s; guidance 1.5; "
          f"chains over {args.max_steps} steps are extrapolated (*)")
    print(f"{'preset':<7} {'params':>7} {'sampler':<13} {'guidance':<9} " + " ".join(f"{f'B={b} s/clip':>13}" for b in args.batches))
    diffusion = GaussianDiffusion(DiffusionConfig())
    for preset in [args.model] if args.model else args.presets:
        unet = load_unet(preset, args.model is not None).to(device)
        params = f"{unet.num_parameters() / 1e6:.1f}M"
        preset = "model" if args.model else preset
        for sampler, steps in ((row.split(":")[0], int(row.split(":")[1])) for row in args.samplers):
            for label, model in (("batched", unet), ("two-pass", TwoPass(unet))):
                if label not in args.guidance:
                    continue
                cells = []
                for batch in args.batches:
                    seconds, scaled = time_sampler(model, diffusion, sampler, steps, batch, args.frames, device,
                                                   args.max_steps, dtype)
                    cells.append(f"{seconds:>12.3f}{'*' if scaled else ' '}")
                print(f"{preset:<7} {params:>7} {f'{sampler}-{steps}':<13} {label:<9} " + " ".join(cells), flush=True)
    print(f"griffin-lim (32 iterations, CPU) per {args.frames * 512 / 16000:.3f}-s clip: {time_griffin_lim(args.frames):.3f} s")


if __name__ == "__main__":
    main()
