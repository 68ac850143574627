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


def _lam(abar: float) -> float:
    """The half log-SNR lambda = log(alpha/sigma) = 0.5 log(abar/(1 - abar)) in which the solvers below step."""
    return 0.5 * (math.log(abar) - math.log1p(-abar))


def dpmpp_step(x: Tensor, x0s: list[Tensor], lams: list[float], abar: float, abar_next: float) -> Tensor:
    """One DPM-Solver++ multistep update of order len(x0s) = 1, 2 or 3 (Lu et al. 2022, "DPM-Solver++",
    Algorithm 2; the third order is the DPM-Solver codebase's, as diffusers' ``multistep_dpm_solver_third_order_update``).

    ``x0s``/``lams``: the x_0 estimates and their lambdas, newest (at x, alpha_bar = ``abar``) first. With
    h = lambda_next - lambda_0, r_k = (lambda_k - lambda_{k+1})/h, D1 and D2 the first and second divided
    differences of the x0s (D1 = (x0_0 - x0_1)/r_0 at order 2): x_next = (sigma_next/sigma) x - alpha_next (e^-h - 1) x0_0
    - alpha_next (e^-h - 1) D1/2 (order 2), or + alpha_next ((e^-h - 1)/h + 1) D1 - alpha_next ((e^-h - 1 + h)/h^2 - 1/2) D2
    (order 3). At abar_next = 1 (sigma_next = 0, h = inf) this is x0_0 exactly, returned directly.
    """
    if abar_next >= 1.0:
        return x0s[0]
    h = _lam(abar_next) - lams[0]
    a_next, phi = math.sqrt(abar_next), math.expm1(-h)
    x_next = math.sqrt((1 - abar_next) / (1 - abar)) * x - a_next * phi * x0s[0]
    if len(x0s) == 2:
        r0 = (lams[0] - lams[1]) / h
        x_next = x_next - (0.5 * a_next * phi / r0) * (x0s[0] - x0s[1])
    elif len(x0s) == 3:
        r0, r1 = (lams[0] - lams[1]) / h, (lams[1] - lams[2]) / h
        d1_0, d1_1 = (x0s[0] - x0s[1]) / r0, (x0s[1] - x0s[2]) / r1
        d1, d2 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1), (d1_0 - d1_1) / (r0 + r1)
        x_next = x_next + (a_next * (phi / h + 1)) * d1 - (a_next * ((phi + h) / h**2 - 0.5)) * d2
    return x_next


def _dpmpp(denoise: Denoiser, x: Tensor, schedule: Schedule, order: int, clip_denoised: bool,
           progress: Progress) -> Tensor:
    """DPM-Solver++(``order``M) as diffusers' DPMSolverMultistepScheduler(algorithm_type="dpmsolver++",
    solver_order=order) steps it: lower orders while the history fills, first order into x_0 (sigma 0), and second
    order on the step before the last when K < 15 (its ``lower_order_final``)."""
    abar, abar_prev = schedule.alphas_cumprod.tolist(), schedule.alphas_cumprod_prev.tolist()
    total, x0s, lams = len(schedule), [], []
    for n, (i, t) in enumerate(_steps(schedule, progress)):
        x0, _ = denoise(x, t)
        if clip_denoised:
            x0 = x0.clamp(-1, 1)
        x0s, lams = [x0, *x0s][:order], [_lam(abar[i]), *lams][:order]
        p = min(order, n + 1, 2 if n == total - 2 and total < 15 else order)
        x = dpmpp_step(x, x0s[:p], lams[:p], abar[i], abar_prev[i])
    return x


def dpmpp_2m(
    denoise: Denoiser, x: Tensor, schedule: Schedule, *, generator: torch.Generator | None = None,
    eta: float = 0.0, clip_denoised: bool = True, progress: Progress = None,
) -> Tensor:
    """DPM-Solver++(2M), multistep second order in the data prediction (Lu et al. 2022, Algorithm 2).

    Equals diffusers' DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2)
    on the same timesteps (SPACING["dpmpp-2m"] is its default grid), final sigma 0, with x0
    clamped when ``clip_denoised`` (its thresholding at sample_max_value 1). Deterministic:
    ``generator`` and ``eta`` are unused; the variance channel is ignored."""
    return _dpmpp(denoise, x, schedule, 2, clip_denoised, progress)


def dpmpp_3m(
    denoise: Denoiser, x: Tensor, schedule: Schedule, *, generator: torch.Generator | None = None,
    eta: float = 0.0, clip_denoised: bool = True, progress: Progress = None,
) -> Tensor:
    """DPM-Solver++(3M), multistep third order in the data prediction (Lu et al. 2022): diffusers'
    DPMSolverMultistepScheduler with solver_order=3, which this equals as dpmpp_2m equals its order 2."""
    return _dpmpp(denoise, x, schedule, 3, clip_denoised, progress)


def unipc_step(x: Tensor, x0s: list[Tensor], lams: list[float], abar: float, abar_next: float,
               x0_next: Tensor | None = None) -> Tensor:
    """One UniP update (``x0_next`` None) or UniC correction of order p = len(x0s), B(h) = e^-h - 1 ("bh2"), in
    the data prediction (Zhao et al. 2023, "UniPC", section 3; as diffusers' ``multistep_uni_p_bh_update`` and
    ``multistep_uni_c_bh_update``).

    ``x0s``/``lams``: x_0 estimates and lambdas, newest (at x) first; UniC also takes ``x0_next``, the estimate at the
    predicted point, and returns that point corrected. With h = lambda_next - lambda_0, r_k = (lambda_k - lambda_0)/h
    (r_p = 1) and b_i = i! (-h) phi_{i+1}(-h) / B(h) (phi_1(z) = (e^z - 1)/z, phi_{k+1}(z) = (phi_k(z) - 1/k!)/z), the
    weights rho solve R rho = b, R_ik = r_k^(i-1) (UniP: without the last row and column); as diffusers, UniP-2 and
    UniC-1 use rho = 1/2. x_next = (sigma_next/sigma) x - alpha_next B(h) (x0_0 + sum_k rho_k (x0_k - x0_0)/r_k).
    At abar_next = 1 the predictor's result is x0_0.
    """
    if abar_next >= 1.0:
        return x0s[0]
    p, h = len(x0s), _lam(abar_next) - lams[0]
    phi = math.expm1(-h)  # h phi_1(-h) and B(h) both
    rks = [(lam - lams[0]) / h for lam in lams[1:]] + [1.0]
    b, h_phi_k, factorial = [], phi / -h - 1, 1
    for i in range(1, p + 1):
        b.append(h_phi_k * factorial / phi)
        factorial *= i + 1
        h_phi_k = h_phi_k / -h - 1 / factorial
    d1s = [(m - x0s[0]) / r for m, r in zip(x0s[1:], rks, strict=False)]
    R, b = torch.tensor([[r**k for r in rks] for k in range(p)], dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    if x0_next is None:
        rhos = [] if p == 1 else [0.5] if p == 2 else torch.linalg.solve(R[:-1, :-1], b[:-1]).tolist()
    else:
        rhos = [0.5] if p == 1 else torch.linalg.solve(R, b).tolist()
        d1s.append(x0_next - x0s[0])
    x_next = math.sqrt((1 - abar_next) / (1 - abar)) * x - math.sqrt(abar_next) * phi * x0s[0]
    for rho, d in zip(rhos, d1s, strict=True):
        x_next = x_next - (math.sqrt(abar_next) * phi * rho) * d
    return x_next


def unipc(
    denoise: Denoiser, x: Tensor, schedule: Schedule, *, generator: torch.Generator | None = None,
    eta: float = 0.0, clip_denoised: bool = True, progress: Progress = None,
) -> Tensor:
    """UniPC-2 with B(h) = e^-h - 1 (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast
    Sampling of Diffusion Models"): each step first corrects the point just evaluated with its own x_0 estimate
    (UniC, no extra network call), then predicts the next one (UniP). Equals diffusers' UniPCMultistepScheduler
    (its defaults: solver_order=2, "bh2", predict_x0, lower_order_final) on SPACING["unipc"], with x0 clamped when
    ``clip_denoised`` (its thresholding at sample_max_value 1). Deterministic; the variance channel is ignored."""
    abar, abar_prev = schedule.alphas_cumprod.tolist(), schedule.alphas_cumprod_prev.tolist()
    total, order, x0s, lams, last, p = len(schedule), 2, [], [], x, 0
    for n, (i, t) in enumerate(_steps(schedule, progress)):
        x0, _ = denoise(x, t)
        if clip_denoised:
            x0 = x0.clamp(-1, 1)
        if n > 0:  # UniC: x was predicted from `last` at order p; the corrector reuses that step's history
            x = unipc_step(last, x0s[:p], lams[:p], abar[i + 1], abar[i], x0_next=x0)
        x0s, lams = [x0, *x0s][:order], [_lam(abar[i]), *lams][:order]
        last, p = x, min(order, n + 1, total - n)
        x = unipc_step(x, x0s[:p], lams[:p], abar[i], abar_prev[i])
    return x


SAMPLERS: dict[str, Callable[..., Tensor]] = {
    "ddpm": ddpm, "ddim": ddim, "dpmpp-2m": dpmpp_2m, "dpmpp-3m": dpmpp_3m, "unipc": unipc,
}

# Which K original steps each sampler evaluates (respace.space_timesteps): the grids of the
# diffusers schedulers each one matches. DPM-Solver++ on the "linspace" grid would take a
# second-order log-SNR step into t = 0 (lambda jumps from ~2.4 to 5.8 at K = 20) and overshoot.
SPACING: dict[str, str] = {
    "ddpm": "linspace", "ddim": "linspace", "dpmpp-2m": "linspace-without-zero", "dpmpp-3m": "linspace-without-zero",
    "unipc": "linspace-without-zero",
}
