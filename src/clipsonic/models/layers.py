"""Building blocks of :class:`~clipsonic.models.unet.MelUNet`, after improved-diffusion's ``unet.py``.

Every block is a plain ``nn.Module`` whose forward has no data-dependent Python branches, so the
whole network traces under ``torch.compile(fullgraph=True)``. Shapes: ``x`` is ``[B, C, H, W]``
(``H`` mel bins, ``W`` frames), ``emb`` is the conditioning vector ``[B, E]``, or one per time ``[B, E, N]``
(``MelUNetConfig.seq_cond="film"``), which each res-block resamples to its own ``W``; with ``seq_cond="xattn"``,
:class:`FrameAttention` layers attend to the frame rows ``context [B, N, E]`` instead.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding ``[B, dim]`` float32 of timestep indices ``t [B]`` (int or float), improved-diffusion's.

    ``emb[:, i] = cos(t · ω_i)`` and ``emb[:, half + i] = sin(t · ω_i)`` with ``ω_i = max_period^(−i/half)``;
    an odd ``dim`` gets a zero last column. MelUNet is fed the raw training-step index ``t ∈ [0, T)``
    (T = 4000), also when sampling a respaced chain (the original ``t``). improved-diffusion's training and
    sampling scripts instead rescale to ``t · 1000 / T`` (``rescale_timesteps=True`` in
    ``model_and_diffusion_defaults``; its ``create_gaussian_diffusion`` alone defaults to False), so a T = 4000
    model there sees ``t ∈ [0, 1000)`` in steps of 0.25. We keep raw indices because every trained model,
    the built-in one included, learned them; both are well posed: with ``max_period = 10000`` the slowest
    frequency turns by under 1 rad over ``[0, 4000)`` (0.46 rad at ``dim = 128``), so no two indices collide.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]  # [B, half]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def zero_module(module: nn.Module) -> nn.Module:
    """Zero a layer's parameters so a residual branch (or the network output) starts at 0."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """Residual block with AdaGN: ``GroupNorm(h) · (1 + scale) + shift``, scale/shift from ``emb``.

    ``x → GN → SiLU → conv3x3 → AdaGN(emb) → SiLU → dropout → conv3x3 (zero-init) → + skip(x)``.
    The zero-initialised last conv makes the block the identity at construction (improved-diffusion).
    """

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, 2 * out_ch)  # → [scale, shift]
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_module(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """``x [B, in_ch, H, W]``, ``emb [B, E]`` or ``[B, E, N]`` → ``[B, out_ch, H, W]``."""
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.modulation(emb, h.shape[-1]).chunk(2, dim=1)  # [B, out_ch, 1, 1 or W] each
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h

    def modulation(self, emb: torch.Tensor, frames: int) -> torch.Tensor:
        """AdaGN ``[scale, shift]``: ``[B, 2·out_ch, 1, 1]`` from ``emb [B, E]``; from ``emb [B, E, N]``, resampled
        by area to this block's ``frames`` (row i covers W-frames ``[i·W/N, (i+1)·W/N)``: repeated where W > N, averaged
        where W < N), ``[B, 2·out_ch, 1, W]``, the same for every mel band.

        Area, not linear interpolation: a sequence of N rows and its per-mel-frame repetition (what a video query
        passes, clipsonic.pipeline.sequence) then give every level the same values, so generation sees the steps
        training saw; linear interpolation ramped each change over one training row (125 ms at 8 fps) but not the
        per-frame one."""
        if emb.ndim == 2:
            return self.emb_proj(F.silu(emb))[:, :, None, None]
        emb = F.adaptive_avg_pool1d(emb, frames)  # [B, E, W]
        return self.emb_proj(F.silu(emb).transpose(1, 2)).transpose(1, 2)[:, :, None, :]


class AttentionBlock(nn.Module):
    """Multi-head self-attention over all ``H·W`` positions, residual, output projection zero-init.

    Cost grows with ``(H·W)²``: used only at coarse resolutions (see ``MelUNetConfig.attention_levels``).
    """

    def __init__(self, channels: int, num_heads: int, groups: int):
        super().__init__()
        self.num_heads = num_heads
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = zero_module(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        """``x [B, C, H, W]`` → ``[B, C, H, W]`` (``emb`` unused; accepted for a uniform call)."""
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.num_heads, c // self.num_heads, h * w)
        q, k, v = qkv.transpose(-1, -2).unbind(dim=1)  # each [B, heads, H·W, C/heads]
        out = F.scaled_dot_product_attention(q, k, v)  # [B, heads, H·W, C/heads]
        out = out.transpose(-1, -2).reshape(b, c, h, w)
        return x + self.proj(out)


def clip_positions(n: int, features: int, device: torch.device) -> torch.Tensor:
    """Fourier features ``[n, 2·features]`` of n equal parts' centres ``p = (i + 0.5)/n`` of a clip:
    ``sin(π k p), cos(π k p)`` for ``k = 1..features``, so positions compare across lengths (N rows, W frames)."""
    p = (torch.arange(n, device=device, dtype=torch.float32) + 0.5) / n
    angles = math.pi * p[:, None] * torch.arange(1, features + 1, device=device, dtype=torch.float32)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


class FrameAttention(nn.Module):
    """Cross-attention from every position of ``x`` to the rows of a frame sequence (``seq_cond="xattn"``), residual,
    output projection zero-init (a new model starts as the global one).

    Queries: ``GroupNorm(x)`` plus a learned projection of the column's time (:func:`clip_positions` of W); keys and
    values: the projected sequence rows ``context [B, N, E]``, keys plus their own time (of N). Which frame a mel
    position listens to is learned, from content and time, where per-time FiLM is told it.
    """

    POSITIONS = 16  # Fourier pairs: a position resolves ~1/32 of the clip (a 1.024-s clip's mel frame)

    def __init__(self, channels: int, context_dim: int, num_heads: int, groups: int):
        super().__init__()
        self.num_heads = num_heads
        self.norm = nn.GroupNorm(groups, channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.kv = nn.Linear(context_dim, 2 * channels)
        self.q_time = nn.Linear(2 * self.POSITIONS, channels, bias=False)
        self.k_time = nn.Linear(2 * self.POSITIONS, channels, bias=False)
        self.proj = zero_module(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """``x [B, C, H, W]``, ``context [B, N, E]`` → ``[B, C, H, W]``."""
        b, c, h, w = x.shape
        heads = self.num_heads
        q = self.q(self.norm(x)) + self.q_time(clip_positions(w, self.POSITIONS, x.device)).T[None, :, None, :]
        k, v = self.kv(context).chunk(2, dim=-1)  # [B, N, C] each
        k = k + self.k_time(clip_positions(context.shape[1], self.POSITIONS, x.device))
        q = q.reshape(b, heads, c // heads, h * w).transpose(-1, -2)  # [B, heads, H·W, C/heads]
        k, v = (z.reshape(b, -1, heads, c // heads).transpose(1, 2) for z in (k, v))  # [B, heads, N, C/heads]
        out = F.scaled_dot_product_attention(q, k, v).transpose(-1, -2).reshape(b, c, h, w)
        return x + self.proj(out)


class Downsample(nn.Module):
    """Strided 3×3 conv: ``[B, C, H, W] → [B, C, H/2, W/2]`` (improved-diffusion's conv_resample)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest ×2 then 3×3 conv: ``[B, C, H, W] → [B, C, 2H, 2W]``."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class EmbedSequential(nn.Sequential):
    """A ``Sequential`` whose layers take ``(x, emb)``, or ``(x, context)`` for :class:`FrameAttention`: one UNet
    stage (res-block [+ frame attention] [+ attention] [+ resample])."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor,  # type: ignore[override]
                context: torch.Tensor | None = None) -> torch.Tensor:
        for layer in self:
            x = layer(x, context) if isinstance(layer, FrameAttention) else layer(x, emb)
        return x
