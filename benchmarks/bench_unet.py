"""Speed and size of the MelUNet presets on this machine's CPU.

Times one training step (forward + MSE backward + AdamW step) at batch 16 of ``[1, 64, 128]``
mels for the CPU-sized presets, and one batch-1 forward for the rest (``paper`` is GPU-sized).

    .venv/bin/python benchmarks/bench_unet.py                    # all presets, 2 threads
    .venv/bin/python benchmarks/bench_unet.py --presets tiny --steps 10 --threads 2
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from clipsonic.models import UNET_PRESETS, MelUNet, MelUNetConfig


def time_train_step(config: MelUNetConfig, batch: int, frames: int, steps: int, warmup: int = 2) -> tuple[float, float]:
    """(median, best) seconds per training step (forward + backward + AdamW) on random data.

    The best step estimates the uncontended speed when other processes share the cores."""
    torch.manual_seed(0)
    model = MelUNet(config).train()
    for p in model.parameters():  # zero-init layers would make some kernels trivially cheap
        if not p.detach().any():
            torch.nn.init.normal_(p, std=0.02)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, config.in_channels, 64, frames)
    t = torch.randint(0, 4000, (batch,))
    cond = torch.nn.functional.normalize(torch.randn(batch, config.cond_dim), dim=-1)
    drop = torch.rand(batch) < 0.1
    target = torch.randn(batch, config.out_channels, 64, frames)
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        loss = torch.nn.functional.mse_loss(model(x, t, cond, drop), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2], min(times)


@torch.no_grad()
def time_forward(config: MelUNetConfig, batch: int, frames: int, repeats: int = 3) -> float:
    """Best of ``repeats`` seconds of one eval-mode forward."""
    model = MelUNet(config).eval()
    x = torch.randn(batch, config.in_channels, 64, frames)
    t = torch.randint(0, 4000, (batch,))
    cond = torch.randn(batch, config.cond_dim)
    model(x, t, cond)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(x, t, cond)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=list(UNET_PRESETS), choices=list(UNET_PRESETS))
    parser.add_argument("--train-presets", nargs="+", default=["tiny", "small"],
                        help="presets whose training step is timed (the others get one batch-1 forward)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--frames", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5, help="timed training steps (median reported)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}, "
          f"training input [{args.batch}, 1, 64, {args.frames}]")
    header = (f"{'preset':<7} {'channels':<20} {'attn':<7} {'patch':>5} {'params':>8} "
              f"{'s/step med':>10} {'best':>6} {'samples/s':>9} {'fwd b=1 s':>9}")
    print(header)
    print("-" * len(header))
    for name in args.presets:
        config = UNET_PRESETS[name]
        channels = "-".join(str(config.base_channels * m) for m in config.channel_mult) + f" x{config.num_res_blocks}"
        params = MelUNet(config).num_parameters()
        median = best = rate = "-"
        if name in args.train_presets:
            seconds, fastest = time_train_step(config, args.batch, args.frames, args.steps)
            median, best, rate = f"{seconds:.3f}", f"{fastest:.3f}", f"{args.batch / seconds:.1f}"
        fwd = f"{time_forward(config, 1, args.frames):.3f}"
        print(f"{name:<7} {channels:<20} {str(config.attention_levels):<7} {config.patch_size:>5} "
              f"{params / 1e6:>7.2f}M {median:>10} {best:>6} {rate:>9} {fwd:>9}")

if __name__ == "__main__":
    main()
