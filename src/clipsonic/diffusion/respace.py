"""Respacing: sample with K of the T training steps (Nichol & Dhariwal 2021, section 4).

The network was trained on all T steps; a K-step chain keeps alpha_bar at the chosen steps
t_0 < ... < t_{K-1} and recomputes beta'_i = 1 - alpha_bar_{t_i} / alpha_bar_{t_{i-1}}
(alpha_bar_{t_{-1}} = 1). The network is still called with the original t_i.
"""

from __future__ import annotations

import numpy as np
import torch

from clipsonic.diffusion.schedule import Schedule


def space_timesteps(num_timesteps: int, steps: int, spacing: str = "linspace") -> torch.Tensor:
    """K = ``steps`` evenly spaced original steps, ascending. [K] int64.

    "linspace": round(linspace(0, T - 1, K)), both ends included: exactly diffusers' DDPMScheduler and
    DDIMScheduler with ``timestep_spacing="linspace"``. For T = 4000, K = 1000: 0, 4, 8, ..., 3999 (the stride
    is 3999/999 = 4.003, so 3 of the gaps are 5). The last step (index 0, t = 0) maps to x_0.
    improved-diffusion's ``space_timesteps(T, "K")`` means the same grid but sums the stride (T - 1)/(K - 1)
    step by step, so where i (T - 1)/(K - 1) is exactly half-way between two steps the sum's rounding error
    can round it the other way: for T = 4000 its grid differs from this one for 1263 of the 4000 K (the
    first K = 31; none of 1-30, 50, 100, 250, 500, 1000, 2000, 4000), in at most 110 of the K steps, each
    by one step (tests/test_diffusion.py reimplements its rule).
    "linspace-without-zero": the top K of round(linspace(0, T - 1, K + 1)), as diffusers'
    DPMSolverMultistepScheduler: t = 0 is not evaluated and the last step jumps from the lowest
    evaluated step straight to x_0 (sigma = 0), which suits solvers that step in log-SNR.
    "trailing": t_j = round(j T/K) - 1, j = 1..K (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample
    Steps are Flawed", Table 2; diffusers' ``timestep_spacing="trailing"``): it starts at t = T - 1 for every K, and
    the K grid is every other step of the 2K grid (j T/K = 2j T/(2K) in floating point too, T/(2K) being (T/K)/2
    exactly), which progressive distillation needs (train/distill.py).
    """
    if not 1 <= steps <= num_timesteps:
        raise ValueError(f"steps must be between 1 and the {num_timesteps} training steps, got {steps}")
    # numpy, not torch: its linspace/round are what diffusers uses, so the grids agree exactly
    if spacing == "linspace":
        grid = np.linspace(0, num_timesteps - 1, steps).round()
    elif spacing == "linspace-without-zero":
        if steps == num_timesteps:
            raise ValueError(f"spacing {spacing!r} evaluates at most T - 1 = {num_timesteps - 1} steps")
        grid = np.linspace(0, num_timesteps - 1, steps + 1).round()[1:]
    elif spacing == "trailing":
        grid = np.round(np.arange(1, steps + 1) * (num_timesteps / steps)) - 1
    else:
        raise ValueError(f"unknown timestep spacing {spacing!r}; use 'linspace', 'linspace-without-zero' or 'trailing'")
    return torch.from_numpy(grid.astype(np.int64))


def respace(schedule: Schedule, timesteps: torch.Tensor) -> Schedule:
    """The chain that visits only ``timesteps`` (ascending original indices) of ``schedule``."""
    timesteps = torch.as_tensor(timesteps, dtype=torch.long)
    if timesteps.ndim != 1 or len(timesteps) == 0 or bool((timesteps[1:] <= timesteps[:-1]).any()):
        raise ValueError("timesteps must be a non-empty, strictly increasing 1-d sequence")
    if int(timesteps[0]) < 0 or int(timesteps[-1]) >= len(schedule):
        raise ValueError(f"timesteps must lie in [0, {len(schedule) - 1}]")
    abar = schedule.alphas_cumprod[timesteps]
    abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    return Schedule(1.0 - abar / abar_prev, schedule.timesteps[timesteps])
