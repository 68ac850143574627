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


def guided_denoiser(
    model: nn.Module | Callable[..., Tensor],
    cond: Tensor,
    *,
    guidance_scale: float,
    formula: str,
    prediction: str,
    schedule: Schedule,
    learn_sigma: bool,
) -> Denoiser:
    """A :data:`Denoiser` running ``model`` with guidance in one batched forward per step.

    ``cond`` [B, D]; ``schedule`` is the full training schedule (the model sees original steps).
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
        t_in = torch.full((x_in.shape[0],), t, dtype=torch.long, device=x.device)
        out = model(x_in, t_in, c_in, drop).to(x.dtype)
        pred, var_values = split_output(out, channels, learn_sigma)
        if need == "both":
            pred = guide(pred[:batch], pred[batch:], guidance_scale, formula)
            var_values = None if var_values is None else var_values[:batch]
        return x0_from_prediction(prediction, schedule, x, t, pred), var_values

    return denoise
