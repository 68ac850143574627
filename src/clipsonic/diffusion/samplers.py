"""Samplers: small pure functions with one signature (k-diffusion style).

    sampler(denoise, x_T, schedule, *, generator, eta, clip_denoised, progress) -> x_0

``denoise(x_t, t)`` returns (x_0 estimate [B, C, H, W], variance v or None) for ORIGINAL step t (guidance
already applied, see guidance.py); ``schedule`` is the (respaced) chain of K steps whose
``timesteps`` are the original steps; a sampler makes K calls, from index K-1 down to 0, and the
last one maps to x_0 (alpha_bar_{-1} = 1). ``progress(i, K)`` is called after step i of K.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from clipsonic.diffusion.guidance import Denoiser
from clipsonic.diffusion.posterior import p_mean_variance
from clipsonic.diffusion.rng import randn
from clipsonic.diffusion.schedule import Schedule

Progress = Callable[[int, int], None] | None


def _steps(schedule: Schedule, progress: Progress):
    """Yield (index, original step) from the noisiest down, reporting progress after each."""
    total = len(schedule)
    for n, i in enumerate(range(total - 1, -1, -1)):
        yield i, int(schedule.timesteps[i])
        if progress is not None:
            progress(n + 1, total)


def ddpm_step(
    schedule: Schedule, i: int, x: Tensor, x0: Tensor, var_values: Tensor | None, noise: Tensor,
    clip_denoised: bool,
) -> Tensor:
    """x_{i-1} ~ p(x_{i-1} | x_i) = N(mu~(x_i, x0_hat), sigma_i^2) (Ho et al. 2020, Algorithm 2).

    sigma_i^2 is the learned range of Nichol & Dhariwal (2021) between beta~'_i and beta'_i of the
    respaced chain, or beta~'_i when var_values is None. No noise is added at i = 0.
    """
    out = p_mean_variance(schedule, x, i, x0, var_values, clip_denoised)
    if i == 0:
        return out["mean"]
    return out["mean"] + torch.exp(0.5 * out["log_variance"]) * noise


def ddpm(
    denoise: Denoiser, x: Tensor, schedule: Schedule, *, generator: torch.Generator | None = None,
    eta: float = 0.0, clip_denoised: bool = True, progress: Progress = None,
) -> Tensor:
    """Ancestral sampling with the learned variance (Ho et al. 2020, Algorithm 2; Nichol & Dhariwal
    2021, section 3.1 and 4 for the learned range and respacing). ``eta`` is unused."""
    for i, t in _steps(schedule, progress):
        x0, var_values = denoise(x, t)
        noise = randn(x.shape, generator, x.device, x.dtype) if i > 0 else torch.zeros_like(x)
        x = ddpm_step(schedule, i, x, x0, var_values, noise, clip_denoised)
    return x


def ddim_step(
    abar: float, abar_prev: float, x: Tensor, x0: Tensor, *, eta: float, noise: Tensor | None, clip_denoised: bool
) -> Tensor:
    """One DDIM step (Song et al. 2021, eq. 12), from alpha_bar = ``abar`` to ``abar_prev``.

    x0 is clamped when ``clip_denoised`` and eps = (x - sqrt(abar) x0)/sqrt(1 - abar) derived from it
    (as improved-diffusion's ddim_sample); sigma = eta sqrt((1 - abar_prev)/(1 - abar)) sqrt(1 - abar/abar_prev);
    x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - sigma^2) eps + sigma noise.
    """
    if clip_denoised:
        x0 = x0.clamp(-1, 1)
    eps = (x - math.sqrt(abar) * x0) / math.sqrt(1 - abar)
    sigma = eta * math.sqrt((1 - abar_prev) / (1 - abar)) * math.sqrt(1 - abar / abar_prev)
    x_prev = math.sqrt(abar_prev) * x0 + math.sqrt(max(1 - abar_prev - sigma**2, 0.0)) * eps
    if sigma > 0:
        if noise is None:
            raise ValueError("ddim_step with eta > 0 needs noise")
        x_prev = x_prev + sigma * noise
    return x_prev


def ddim(
    denoise: Denoiser, x: Tensor, schedule: Schedule, *, generator: torch.Generator | None = None,
    eta: float = 0.0, clip_denoised: bool = True, progress: Progress = None,
) -> Tensor:
    """DDIM (Song et al. 2021, "Denoising Diffusion Implicit Models", eq. 12): deterministic for
    eta = 0, DDPM-like for eta = 1. Uses eps only; the variance channel is ignored."""
    abar, abar_prev = schedule.alphas_cumprod.tolist(), schedule.alphas_cumprod_prev.tolist()
    for i, t in _steps(schedule, progress):
        x0, _ = denoise(x, t)
        noise = randn(x.shape, generator, x.device, x.dtype) if eta > 0 and i > 0 else None
        x = ddim_step(abar[i], abar_prev[i], x, x0, eta=eta, noise=noise, clip_denoised=clip_denoised)
    return x


def dpmpp_2m_step(
    x: Tensor, x0: Tensor, x0_prev: Tensor | None, h_prev: float | None, abar: float, abar_next: float
) -> tuple[Tensor, float]:
    """One DPM-Solver++(2M) step (Lu et al. 2022, "DPM-Solver++", Algorithm 2) -> (x_next, h).

    With alpha = sqrt(abar), sigma = sqrt(1 - abar), lambda = log(alpha/sigma) = 0.5 log(abar/(1 - abar)),
    h = lambda_next - lambda: D = x0 (first step) or (1 + 1/(2r)) x0 - 1/(2r) x0_prev with r = h_prev/h;
    x_next = (sigma_next/sigma) x - alpha_next (e^-h - 1) D. At abar_next = 1 (sigma_next = 0, h = inf)
    this is x0 exactly, which is returned directly.
    """
    if abar_next >= 1.0:
        return x0, math.inf
    h = 0.5 * (math.log(abar_next) - math.log1p(-abar_next)) - 0.5 * (math.log(abar) - math.log1p(-abar))
    if x0_prev is None or h_prev is None:
        d = x0
    else:
        r = h_prev / h
        d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev
    ratio = math.sqrt((1 - abar_next) / (1 - abar))
    return ratio * x - math.sqrt(abar_next) * math.expm1(-h) * d, h


def dpmpp_2m(
    denoise: Denoiser, x: Tensor, schedule: Schedule, *, generator: torch.Generator | None = None,
    eta: float = 0.0, clip_denoised: bool = True, progress: Progress = None,
) -> Tensor:
    """DPM-Solver++(2M), multistep second order in the data prediction (Lu et al. 2022, Algorithm 2).

    Equals diffusers' DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2)
    on the same timesteps (SPACING["dpmpp-2m"] is its default grid), final sigma 0, with x0
    clamped when ``clip_denoised`` (its thresholding at sample_max_value 1). Deterministic:
    ``generator`` and ``eta`` are unused; the variance channel is ignored."""
    abar, abar_prev = schedule.alphas_cumprod.tolist(), schedule.alphas_cumprod_prev.tolist()
    x0_prev, h_prev = None, None
    for i, t in _steps(schedule, progress):
        x0, _ = denoise(x, t)
        if clip_denoised:
            x0 = x0.clamp(-1, 1)
        x, h_prev = dpmpp_2m_step(x, x0, x0_prev, h_prev, abar[i], abar_prev[i])
        x0_prev = x0
    return x


SAMPLERS: dict[str, Callable[..., Tensor]] = {"ddpm": ddpm, "ddim": ddim, "dpmpp-2m": dpmpp_2m}

# Which K original steps each sampler evaluates (respace.space_timesteps): the grids of the
# diffusers schedulers each one matches. DPM-Solver++ on the "linspace" grid would take a
# second-order log-SNR step into t = 0 (lambda jumps from ~2.4 to 5.8 at K = 20) and overshoot.
SPACING: dict[str, str] = {"ddpm": "linspace", "ddim": "linspace", "dpmpp-2m": "linspace-without-zero"}
