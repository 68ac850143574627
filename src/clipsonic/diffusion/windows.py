"""Long mels from a network trained on short ones: MultiDiffusion (Bar-Tal et al. 2023, "MultiDiffusion: Fusing
Diffusion Paths for Controlled Image Generation", eq. 5 with uniform crops).

A mel longer than the training length is cut into overlapping windows of the training length; the network runs on
every window (one batched forward) and its outputs, all channels, are averaged where windows overlap, weighted by a
Hann bump so that joins blend. Averaging the outputs averages the x_0 estimates (they are affine in the output at a
given x_t), which is MultiDiffusion's least-squares fusion of the windows' steps. The wrapper follows the model
contract (guidance.py), so every sampler runs it unchanged and the network never sees a length it was not trained on.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn


def window_starts(frames: int, window: int, hop: int) -> list[int]:
    """First frames of windows of ``window`` frames every ``hop`` frames covering ``frames``; the last one ends at
    ``frames`` (so it may overlap its neighbour by more than window - hop)."""
    if frames <= window:
        return [0]
    return [*range(0, frames - window, hop), frames - window]


class WindowedModel(nn.Module):
    """``model`` on overlapping windows of ``window`` frames (hop: half a window by default), outputs averaged.

    Same contract as the model: ``(x [B, C, H, F], t [B], cond [B, D], drop_cond [B]) -> [B, C', H, F]``, and a
    frame-aligned ``cond_seq [B, F, D]`` (one row per mel frame) is cut into the same windows as ``x``. A mel of at
    most ``window`` frames goes to ``model`` as it is. ``window`` and ``hop`` must keep the model's own constraints
    (for MelUNet, ``window`` a multiple of its downsample factor).
    """

    def __init__(self, model: nn.Module | Callable[..., Tensor], window: int, hop: int | None = None) -> None:
        super().__init__()
        hop = window // 2 if hop is None else hop
        if not 1 <= hop <= window:
            raise ValueError(f"need 1 <= hop <= window, got window {window} and hop {hop}")
        self.model, self.window, self.hop = model, window, hop

    def forward(self, x: Tensor, t: Tensor, cond: Tensor, drop_cond: Tensor | None = None,
                cond_seq: Tensor | None = None) -> Tensor:
        batch, frames, w = x.shape[0], x.shape[-1], self.window
        if cond_seq is not None and cond_seq.shape[1] != frames:
            raise ValueError(f"cond_seq has {cond_seq.shape[1]} rows for {frames} mel frames; give one per frame")
        seq = {} if cond_seq is None else {"cond_seq": cond_seq}  # a model without sequences is called as before
        if frames <= w:
            return self.model(x, t, cond, drop_cond, **seq)
        starts = window_starts(frames, w, self.hop)
        n = len(starts)
        crops = torch.cat([x[..., s:s + w] for s in starts])  # [n·B, C, H, w], window-major
        if cond_seq is not None:
            seq["cond_seq"] = torch.cat([cond_seq[:, s:s + w] for s in starts])  # [n·B, w, D], the same order
        out = self.model(crops, t.repeat(n), cond.repeat(n, 1), None if drop_cond is None else drop_cond.repeat(n),
                         **seq)
        out = out.unflatten(0, (n, batch))  # [n, B, C', H, w]
        # a Hann bump without its zero end points: every frame has a positive weight, a window's middle the most
        weight = torch.hann_window(w + 2, periodic=False, dtype=out.dtype, device=out.device)[1:-1]
        total, norm = out.new_zeros((*out.shape[1:-1], frames)), out.new_zeros(frames)
        for k, s in enumerate(starts):
            total[..., s:s + w] += out[k] * weight
            norm[s:s + w] += weight
        return total / norm
