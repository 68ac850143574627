"""Exponential moving average of the network's weights (what the exported pipeline samples with)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """A frozen copy of ``model`` updated as ``ema ← decay · ema + (1 − decay) · weights`` after each step.

    Buffers (if any) are copied, not averaged. Kept in float32 on the model's device.
    """

    def __init__(self, model: nn.Module):
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, decay: float) -> None:
        ema_params = list(self.model.parameters())
        params = [p.detach().to(e.dtype) for e, p in zip(ema_params, model.parameters(), strict=True)]
        torch._foreach_lerp_(ema_params, params, 1.0 - decay)
        for e, b in zip(self.model.buffers(), model.buffers(), strict=True):
            e.copy_(b)

    def to(self, device: torch.device) -> EMA:
        self.model.to(device)
        return self
