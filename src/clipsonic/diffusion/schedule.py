"""Noise schedules and the per-step constants of the Gaussian process, precomputed in float64.

Forward process: q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I), so
q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I) with alpha_bar_t = prod_{s<=t} (1 - beta_s).
Indices are 0-based: index 0 is the first noising step, x_{-1} means x_0 (alpha_bar_{-1} = 1).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

MAX_BETA = 0.999  # Nichol & Dhariwal clip beta so the last steps stay invertible


def cosine_betas(num_timesteps: int, s: float = 0.008) -> Tensor:
    """beta_i = min(1 - f((i+1)/T) / f(i/T), 0.999), f(u) = cos^2(((u + s)/(1 + s)) pi/2). [T] float64.

    The same discretisation as improved-diffusion's and diffusers' ``squaredcos_cap_v2``.
    """
    u = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
    f = torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2
    return (1 - f[1:] / f[:-1]).clamp(max=MAX_BETA)


def linear_betas(num_timesteps: int) -> Tensor:
    """Ho et al.'s linear 1e-4 .. 0.02 for T = 1000, scaled by 1000/T (improved-diffusion). [T] float64."""
    if num_timesteps < 20:
        raise ValueError(f"the linear schedule needs num_timesteps >= 20 (beta_T = 20/T), got {num_timesteps}")
    scale = 1000.0 / num_timesteps
    return torch.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=torch.float64)


class Schedule:
    """All constants of a (possibly respaced) chain of K steps, float64 on the CPU.

    ``timesteps[i]`` is the ORIGINAL training step that index i stands for (the network is always
    called with it); for the full chain it is i. Respacing (respace.py) builds a Schedule from the
    betas beta'_i = 1 - alpha_bar_{t_i} / alpha_bar_{t_{i-1}}.

    Posterior q(x_{i-1} | x_i, x_0) = N(c0_i x_0 + ct_i x_i, beta~_i) with
    beta~_i = beta_i (1 - alpha_bar_{i-1}) / (1 - alpha_bar_i),
    c0_i = sqrt(alpha_bar_{i-1}) beta_i / (1 - alpha_bar_i),
    ct_i = sqrt(alpha_i) (1 - alpha_bar_{i-1}) / (1 - alpha_bar_i).
    beta~_0 = 0, so its log is clipped to log beta~_1 (improved-diffusion).
    """

    def __init__(self, betas: Tensor, timesteps: Tensor | None = None) -> None:
        betas = betas.to(torch.float64)
        if betas.ndim != 1 or len(betas) < 1 or not bool(((betas > 0) & (betas <= 1)).all()):
            raise ValueError("betas must be a 1-d tensor with values in (0, 1]")
        self.betas = betas
        self.timesteps = torch.arange(len(betas)) if timesteps is None else timesteps.to(torch.long)
        if self.timesteps.shape != betas.shape:
            raise ValueError(f"{len(self.timesteps)} timesteps for {len(betas)} betas")
        alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(alphas, 0)
        self.alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])
        abar, abar_prev = self.alphas_cumprod, self.alphas_cumprod_prev
        self.sqrt_alphas_cumprod = abar.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - abar).sqrt()
        self.sqrt_recip_alphas_cumprod = (1.0 / abar).sqrt()
        self.sqrt_recipm1_alphas_cumprod = (1.0 / abar - 1.0).sqrt()
        self.posterior_variance = betas * (1.0 - abar_prev) / (1.0 - abar)
        clip_from = self.posterior_variance[1] if len(betas) > 1 else betas[0]
        self.posterior_log_variance_clipped = torch.cat([clip_from.reshape(1), self.posterior_variance[1:]]).log()
        self.posterior_mean_coef1 = betas * abar_prev.sqrt() / (1.0 - abar)
        self.posterior_mean_coef2 = (1.0 - abar_prev) * alphas.sqrt() / (1.0 - abar)
        self.log_betas = betas.log()
        self.snr = abar / (1.0 - abar)  # in float64: 1 - alpha_bar_0 ~ 1e-5 cancels in float32
        self._cache: dict[tuple[str, torch.device, torch.dtype], Tensor] = {}

    def __len__(self) -> int:
        return len(self.betas)

    def at(self, name: str, index: Tensor | int, like: Tensor) -> Tensor | float:
        """Constant ``name`` at ``index``, shaped to broadcast against ``like`` [B, ...].

        An int index gives a Python float (one step for the whole batch: sampling); a LongTensor [B]
        gives a [B, 1, ..., 1] tensor in ``like``'s dtype (float32 unless float64) and device.
        """
        table: Tensor = getattr(self, name)
        if isinstance(index, int):
            return float(table[index])
        dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
        key = (name, like.device, dtype)
        if key not in self._cache:  # one copy per device: no host sync inside the training step
            self._cache[key] = table.to(device=like.device, dtype=dtype)
        out = self._cache[key][index.to(like.device)]
        return out.reshape(-1, *([1] * (like.ndim - 1)))
