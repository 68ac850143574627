"""The paper's cosine schedule (T = 4000, s = 0.008) in float64, written out as a loop, independent of clipsonic."""

import math

import torch

T = 4000


def reference_betas() -> torch.Tensor:
    """The paper's cosine betas in float64, written out as a loop (independent of clipsonic)."""
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    return torch.tensor([min(1 - f((i + 1) / T) / f(i / T), 0.999) for i in range(T)], dtype=torch.float64)


def reference_abar() -> torch.Tensor:
    return torch.cumprod(1 - reference_betas(), 0)
