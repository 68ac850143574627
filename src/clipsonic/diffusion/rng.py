"""Random draws from an optional torch.Generator, made on the generator's device.

Drawing where the generator lives (then moving) makes a seeded CPU generator give the same numbers
whatever device the tensors end up on, as diffusers' ``randn_tensor`` does.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _source(generator: torch.Generator | None, device: torch.device) -> torch.device:
    return generator.device if generator is not None else device


def randn(shape, generator: torch.Generator | None, device: torch.device, dtype=torch.float32) -> Tensor:
    """Standard normal noise of ``shape`` on ``device``."""
    return torch.randn(shape, generator=generator, device=_source(generator, device), dtype=dtype).to(device)


def rand(shape, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """Uniform [0, 1) draws of ``shape`` on ``device`` (float32)."""
    return torch.rand(shape, generator=generator, device=_source(generator, device)).to(device)


def randint(high: int, shape, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """Uniform integers in [0, high) of ``shape`` on ``device`` (int64)."""
    return torch.randint(0, high, shape, generator=generator, device=_source(generator, device)).to(device)
