"""Our sampler + MelUNet against diffusers' UNet2DModel + DPMSolverMultistepScheduler on the same work.

Both generate ``[B, 1, 64, 128]`` mels (one 4.096-s clip each) with DPM-Solver++(2M), 25 steps, v-prediction on the
cosine T = 4000 schedule, x_0 clamped to [-1, 1], classifier-free guidance w = 1.5 as one batch of 2B per step, from
random weights, on the same threads. The diffusers network mirrors the MelUNet preset block for block (the same
widths, res-blocks per level, attention levels and heads, scale-shift norm, a 2x2 pixel-unshuffle around it and
the CLIP vector projected into its class embedding), so the FLOPs per forward, counted by
torch.utils.flop_counter.FlopCounterMode and printed for both, agree to a few percent; what differs is the code
around the convolutions. diffusers' loop is its pipelines' own: ``set_timesteps``, then per step ``cat([x, x])``,
the network, the guidance mix, ``scheduler.step``.

    .venv/bin/python benchmarks/bench_diffusers.py                      # CPU, 1 thread, tiny + small, B = 1 and 8
    .venv/bin/python benchmarks/bench_diffusers.py --device cuda --presets small paper --batches 1 16
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from diffusers import DPMSolverMultistepScheduler, UNet2DModel
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from clipsonic.diffusion import DiffusionConfig, GaussianDiffusion
from clipsonic.models import MelUNet

GUIDANCE, STEPS, COND_DIM = 1.5, 25, 768


class DiffusersMelUNet(nn.Module):
    """diffusers' UNet2DModel built as MelUNet's preset ``config``, under MelUNet's call contract."""

    def __init__(self, unet: MelUNet) -> None:
        super().__init__()
        c = unet.config
        widths = tuple(m * c.base_channels for m in c.channel_mult)
        attn = [level in c.attention_levels for level in range(len(widths))]
        self.patch = c.patch_size
        self.net = UNet2DModel(
            in_channels=c.in_channels * c.patch_size**2, out_channels=c.out_channels * c.patch_size**2,
            block_out_channels=widths, layers_per_block=c.num_res_blocks, norm_num_groups=c.norm_groups,
            down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
            up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
            attention_head_dim=widths[-1] // c.heads_at(widths[-1]), resnet_time_scale_shift="scale_shift",
            class_embed_type="identity", flip_sin_to_cos=False,
        )
        self.cond_proj = nn.Linear(c.cond_dim, 4 * c.base_channels)
        self.null_cond = nn.Parameter(torch.randn(c.cond_dim) / c.cond_dim**0.5)

    def forward(self, x, t, cond, drop_cond):
        cond = torch.where(drop_cond[:, None], self.null_cond[None, :], cond)
        out = self.net(nn.functional.pixel_unshuffle(x, self.patch), t, class_labels=self.cond_proj(cond)).sample
        return nn.functional.pixel_shuffle(out, self.patch)


def randomise(model: nn.Module) -> nn.Module:
    """Eval mode, no grads, and no all-zero tensors (zero-init output layers would make kernels trivially cheap)."""
    torch.manual_seed(0)
    model.eval().requires_grad_(False)
    for p in model.parameters():
        if not p.detach().any():
            nn.init.normal_(p, std=0.02)
    return model


def forward_flops(model: nn.Module, batch: int, frames: int, device: torch.device) -> int:
    """FLOPs of one guided forward of 2B examples."""
    x, t = torch.randn(2 * batch, 1, 64, frames, device=device), torch.full((2 * batch,), 1000, device=device)
    drop = torch.arange(2 * batch, device=device) >= batch
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x, t, torch.randn(2 * batch, COND_DIM, device=device), drop)
    return counter.get_total_flops()


def ours(unet: MelUNet, cond: torch.Tensor, x_T: torch.Tensor) -> torch.Tensor:
    diffusion = GaussianDiffusion(DiffusionConfig(prediction="v"))
    return diffusion.sample(unet, tuple(x_T.shape), cond, sampler="dpmpp-2m", steps=STEPS, guidance_scale=GUIDANCE,
                            x_T=x_T)


@torch.no_grad()
def theirs(model: DiffusersMelUNet, cond: torch.Tensor, x_T: torch.Tensor) -> torch.Tensor:
    scheduler = DPMSolverMultistepScheduler(
        num_train_timesteps=4000, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction",
        algorithm_type="dpmsolver++", solver_order=2, thresholding=True, sample_max_value=1.0,
    )
    scheduler.set_timesteps(STEPS, device=x_T.device)
    batch, x = x_T.shape[0], x_T
    drop = torch.arange(2 * batch, device=x.device) >= batch
    for t in scheduler.timesteps:
        out = model(torch.cat([x, x]), t.expand(2 * batch), torch.cat([cond, cond]), drop)[:, :1]  # v; not the variance
        v_cond, v_uncond = out.chunk(2)
        x = scheduler.step(v_uncond + GUIDANCE * (v_cond - v_uncond), t, x).prev_sample
    return x


def seconds_per_clip(run, model: nn.Module, batch: int, frames: int, device: torch.device) -> float:
    cond = nn.functional.normalize(torch.randn(batch, COND_DIM, device=device), dim=-1)
    x_T = torch.randn(batch, 1, 64, frames, device=device)
    with torch.no_grad():  # warm-up: one forward of the step's shapes
        model(torch.cat([x_T, x_T]), torch.full((2 * batch,), 999, device=device), torch.cat([cond, cond]),
              torch.arange(2 * batch, device=device) >= batch)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    run(model, cond, x_T)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--frames", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__} on {name}; load average {os.getloadavg()[0]:.1f}; mel [B, 1, 64, {args.frames}]; "
          f"dpmpp-2m {STEPS} steps; guidance {GUIDANCE} as one batch of 2B")
    print(f"{'preset':<7} {'B':>3} {'ours GFLOP/fwd':>15} {'diffusers GFLOP/fwd':>20} {'ours s/clip':>12} "
          f"{'diffusers s/clip':>17} {'diffusers/ours':>15}")
    for preset in args.presets:
        unet = MelUNet.from_preset(preset, cond_dim=COND_DIM)
        mirror = randomise(DiffusersMelUNet(unet)).to(device)
        unet = randomise(unet).to(device)
        for batch in args.batches:
            flops = [forward_flops(m, batch, args.frames, device) / 1e9 for m in (unet, mirror)]
            ours_s = seconds_per_clip(ours, unet, batch, args.frames, device)
            theirs_s = seconds_per_clip(theirs, mirror, batch, args.frames, device)
            print(f"{preset:<7} {batch:>3} {flops[0]:>15.2f} {flops[1]:>20.2f} {ours_s:>12.3f} {theirs_s:>17.3f} "
                  f"{theirs_s / ours_s:>15.2f}", flush=True)


if __name__ == "__main__":
    main()
