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


def randn_per_row(shape, generators, device: torch.device | str = "cpu") -> Tensor:
    """Standard normal ``[B, *shape[1:]]`` where row i comes from ``generators[i]`` alone (None: global RNG).

    A sample then depends only on its own seed, so a batch gives what the same queries give one at a
    time (diffusers' ``randn_tensor`` with a list of generators).
    """
    if generators is None:
        return torch.randn(tuple(shape)).to(device)
    return torch.cat([torch.randn((1, *shape[1:]), generator=g, device=g.device) for g in generators]).to(device)

