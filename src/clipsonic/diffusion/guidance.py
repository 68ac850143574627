"""Classifier-free guidance (Ho & Salimans 2021) around any network that follows the model contract.

Model contract: ``model(x [B, C, H, W], t LongTensor [B] (original steps), cond [B, D],
drop_cond BoolTensor [B]) -> [B, 2C, H, W]`` ([eps-or-v-or-x0, variance v]) or [B, C, H, W] without a
learned variance; where ``drop_cond`` is True the model uses its learned null condition.

Guidance mixes the network's own prediction: eps, v and x_0 are affine in one another at a given
x_t and the mix's weights sum to 1, so guiding any of them is the same thing. The mix then becomes
an x_0 estimate by that parametrisation's direct formula (for v, x_0 = sqrt(abar) x_t - sqrt(1 - abar) v):
going through eps instead divides float32 rounding by sqrt(abar), 5e-5 at the noisiest step of a
1000-step cosine schedule. The variance channel is the conditional branch's.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from clipsonic.diffusion.posterior import split_output, x0_from_prediction
from clipsonic.diffusion.schedule import Schedule

# The guidance weight w everyone defaults to: the paper's best FAD (CLIPSonic, Table 1 and Fig. 3).
DEFAULT_GUIDANCE_SCALE = 1.5

# What samplers call: (x_t [B, C, H, W], original step t) -> (x_0 estimate [B, C, H, W], v [B, C, H, W] or None)
Denoiser = Callable[[Tensor, int], tuple[Tensor, "Tensor | None"]]


def guide(cond: Tensor, uncond: Tensor, guidance_scale: float, formula: str) -> Tensor:
    """Mix the two branches' predictions (written for eps; the same for v or x_0).

    "cfg":          eps = eps_u + w (eps_c - eps_u)   (w = 0: unconditional, w = 1: conditional)
    "cfg-plus-one": eps = eps_c + w (eps_c - eps_u)   (w = 0: conditional; equals "cfg" at w + 1)
    """
    if formula == "cfg":
        return uncond + guidance_scale * (cond - uncond)
    if formula == "cfg-plus-one":
        return cond + guidance_scale * (cond - uncond)
    raise ValueError(f"unknown guidance formula {formula!r}; use 'cfg' or 'cfg-plus-one'")


def rescaled_guidance(guided: Tensor, cond: Tensor, strength: float) -> Tensor:
    """Give each row of the guided x_0 [B, C, H, W] the conditional branch's mean and standard deviation, mixed
    back with ``strength`` (0: plain guidance, 1: fully matched).

    Guidance with w > 1 extrapolates the level and the contrast along with the content: loud mel bins get louder,
    quiet ones quieter, and the audio overshoots full scale (benchmarks/bench_levels.py). This is the guidance
    rescale of Lin et al. 2024 ("Common Diffusion Noise Schedules and Sample Steps are Flawed", section 3.4;
    diffusers' ``rescale_noise_cfg``), standardised about each row's mean instead of 0: in the log-mel space 0 is a
    mid level, not silence. The conditional branch keeps its own loudness and dynamics; guidance picks the shape.
    """
    dims = tuple(range(1, guided.ndim))
    std_g, std_c = guided.std(dim=dims, keepdim=True), cond.std(dim=dims, keepdim=True)
    matched = (guided - guided.mean(dim=dims, keepdim=True)) * (std_c / std_g.clamp(min=1e-8)) + cond.mean(dim=dims, keepdim=True)
    return strength * matched + (1 - strength) * guided


def guided_denoiser(
    model: nn.Module | Callable[..., Tensor],
    cond: Tensor,
    *,
    guidance_scale: float,
    formula: str,
    prediction: str,
    schedule: Schedule,
    learn_sigma: bool,
    rescale: float = 0.0,
) -> Denoiser:
    """A :data:`Denoiser` running ``model`` with guidance in one batched forward per step.

    ``cond`` [B, D]; ``schedule`` is the full training schedule (the model sees original steps). The denoiser takes
    one original step ``t`` for the batch, or a LongTensor [B] of them (distillation trains on mixed steps).
    ``rescale``: :func:`rescaled_guidance` strength applied to the guided x_0 (0: none).
    """
    # A mix that is exactly one branch runs it alone, on B rather than 2B examples, with its own variance: "cfg"
    # at w = 1 ("cfg-plus-one" at w = 0) is the conditional model, "cfg" at w = 0 the unconditional one.
    need = "both"
    if (formula == "cfg" and guidance_scale == 1.0) or (formula == "cfg-plus-one" and guidance_scale == 0.0):
        need = "cond"
    elif formula == "cfg" and guidance_scale == 0.0:
        need = "uncond"

    def denoise(x: Tensor, t: int) -> tuple[Tensor, Tensor | None]:
        batch, channels = x.shape[:2]
        if need == "both":  # [x; x] with [cond; null]: one forward of 2B examples
            x_in, c_in = torch.cat([x, x]), torch.cat([cond, cond])
            drop = torch.arange(2 * batch, device=x.device) >= batch
        else:
            x_in, c_in = x, cond
            drop = torch.full((batch,), need == "uncond", dtype=torch.bool, device=x.device)
        t_in = (torch.full((x_in.shape[0],), t, dtype=torch.long, device=x.device) if isinstance(t, int)
                else t.to(x.device).repeat(x_in.shape[0] // batch))
        out = model(x_in, t_in, c_in, drop).to(x.dtype)
        pred, var_values = split_output(out, channels, learn_sigma)
        if need != "both":
            return x0_from_prediction(prediction, schedule, x, t, pred), var_values
        x0 = x0_from_prediction(prediction, schedule, x, t, guide(pred[:batch], pred[batch:], guidance_scale, formula))
        if rescale:
            x0 = rescaled_guidance(x0, x0_from_prediction(prediction, schedule, x, t, pred[:batch]), rescale)
        return x0, None if var_values is None else var_values[:batch]

    return denoise


class NegativeConditioned(nn.Module):
    """Wraps the mel model so its unconditional rows (``drop_cond`` set, in sample order, whichever
    guidance layout the denoiser uses) see ``negative`` [B, D] instead of the null vector (and, given a
    ``cond_seq`` [B, F, D], its constant sequence)."""

    def __init__(self, model: nn.Module, negative: torch.Tensor) -> None:
        super().__init__()
        self.model, self.negative = model, negative

    def forward(self, x, t, cond, drop_cond=None, cond_seq=None):
        seq = {} if cond_seq is None else {"cond_seq": cond_seq}  # a model without sequences is called as before
        if drop_cond is None or not bool(drop_cond.any()):
            return self.model(x, t, cond, drop_cond, **seq)
        cond = cond.clone()
        cond[drop_cond] = self.negative.to(cond.dtype)
        if cond_seq is not None:
            seq["cond_seq"] = cond_seq.clone()
            seq["cond_seq"][drop_cond] = cond[drop_cond, None, :].to(cond_seq.dtype)
        return self.model(x, t, cond, torch.zeros_like(drop_cond), **seq)
