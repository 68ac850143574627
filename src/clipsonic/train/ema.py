"""Exponential moving average of a network's weights (what the UNet and prior exports sample with)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """A frozen float32 copy of ``model``: ``ema ← d · ema + (1 − d) · weights`` after each step; buffers are copied.

    With ``warmup`` the decay after ``n`` updates is ``min(decay, (1 + n) / (10 + n))`` (diffusers'
    EMAModel): 0.92 at step 100, 0.991 at 1000, so a short run's EMA already tracks the weights.
    """

    def __init__(self, model: nn.Module, decay: float, warmup: bool = True):
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay, self.warmup = decay, warmup

    @torch.no_grad()
    def update(self, model: nn.Module, n: int) -> None:
        decay = min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay
        ema_params = list(self.model.parameters())
        params = [p.detach().to(e.dtype) for e, p in zip(ema_params, model.parameters(), strict=True)]
        torch._foreach_lerp_(ema_params, params, 1.0 - decay)
        for e, b in zip(self.model.buffers(), model.buffers(), strict=True):
            e.copy_(b)
