"""Our diffusion prior's network: CLIP text embedding → CLIP image embedding (DALL-E 2's prior, small).

DALL-E 2 (Ramesh et al. 2022, section 2.1) denoises the image embedding with a decoder-only
transformer over [text tokens, text embedding, timestep, noisy image embedding, query] and reads
the prediction of the clean embedding (x_0) at the query. This network keeps that shape minus the
text-token sequence: it sees four tokens, [text embedding, timestep, x_t, query], and conditions
on the pooled CLIP text embedding only, so it needs nothing beyond what ``encode_texts`` gives.
(Karlo's ``PriorTransformer``, loaded by karlo.py, does read the 77 token states.)

Like :class:`~clipsonic.models.MelUNet` it knows nothing of diffusion: it follows the model
contract of ``clipsonic.diffusion`` (``model(x, t, cond, drop_cond)``) with ``x`` an embedding
``[B, D]`` instead of a mel, so the same :class:`~clipsonic.diffusion.GaussianDiffusion` trains and
samples it. Data live in the scaled space ``x = √D · e`` (components of unit variance, DALLE2-
pytorch's ``image_embed_scale``), where ``e`` is the L2-normalised CLIP image embedding.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from clipsonic.config import Config, ConfigError
from clipsonic.models.layers import timestep_embedding


@dataclasses.dataclass(frozen=True)
class PriorNetConfig(Config):
    """Architecture of :class:`PriorNet` (defaults: the ``"small"`` preset)."""

    embed_dim: int = 768  # D: CLIP ViT-L/14's joint space, where the public priors live
    width: int = 256  # transformer width
    depth: int = 4  # transformer layers over the 4 tokens
    num_heads: int = 4
    # DALL-E 2 trained its prior without dropout on 650M pairs; a few thousand pairs overfit without it.
    dropout: float = 0.1

    def __post_init__(self) -> None:
        for name in ("embed_dim", "width", "depth", "num_heads"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"PriorNetConfig.{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.width % self.num_heads:
            raise ConfigError(f"PriorNetConfig: width {self.width} is not divisible by num_heads {self.num_heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"PriorNetConfig.dropout must be in [0, 1), got {self.dropout}")


PRIOR_PRESETS: dict[str, PriorNetConfig] = {
    # Tests and 2-core demos: ~0.1M parameters, thousands of steps per minute.
    "tiny": PriorNetConfig(width=64, depth=2, num_heads=2, dropout=0.0),
    # One GPU, or a CPU run of a few thousand steps on a preprocessed dataset: ~3M parameters.
    "small": PriorNetConfig(),
    # DALLE2-pytorch's LAION prior width and depth (dim 768, depth 12): GPU, millions of pairs.
    "base": PriorNetConfig(width=768, depth=12, num_heads=12, dropout=0.05),
}


def prior_preset(name: str, embed_dim: int) -> PriorNetConfig:
    """A preset of :data:`PRIOR_PRESETS` for ``embed_dim``-d CLIP embeddings."""
    if name not in PRIOR_PRESETS:
        raise ConfigError(f"unknown prior preset {name!r}; choose one of {sorted(PRIOR_PRESETS)}")
    return dataclasses.replace(PRIOR_PRESETS[name], embed_dim=embed_dim)


class PriorNet(nn.Module):
    """Predicts the clean scaled image embedding x_0 ``[B, D]`` from x_t, t and a text embedding.

    Classifier-free guidance as in MelUNet: a learned ``null_text`` replaces the text embedding
    where ``drop_cond`` is set (DALL-E 2 drops the text condition 10 % of the time).
    """

    def __init__(self, config: PriorNetConfig) -> None:
        super().__init__()
        self.config = config
        d, w = config.embed_dim, config.width
        self.text_in = nn.Linear(d, w)
        self.x_in = nn.Linear(d, w)
        self.time_mlp = nn.Sequential(nn.Linear(w, w), nn.SiLU(), nn.Linear(w, w))
        self.query = nn.Parameter(torch.randn(w) * 0.02)
        self.position = nn.Parameter(torch.randn(4, w) * 0.02)  # [text, time, x_t, query]
        self.null_text = nn.Parameter(torch.randn(d) / math.sqrt(d))  # unit-norm, like a CLIP vector
        layer = nn.TransformerEncoderLayer(w, config.num_heads, 4 * w, config.dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, config.depth, enable_nested_tensor=False)
        self.norm_out = nn.LayerNorm(w)
        self.out = nn.Linear(w, d)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor,
                drop_cond: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` [B, D] noisy scaled image embeddings, ``t`` [B] original steps, ``cond`` [B, D]
        L2-normalised text embeddings, ``drop_cond`` optional bool [B] → predicted x_0 [B, D]."""
        d = self.config.embed_dim
        if x.ndim != 2 or x.shape[1] != d or cond.shape != x.shape or t.shape != x.shape[:1]:
            raise ValueError(f"PriorNet expects x and cond [B, {d}] and t [B]; got {list(x.shape)}, "
                             f"{list(cond.shape)}, {list(t.shape)}")
        cond = cond.to(self.null_text.dtype)
        if drop_cond is not None:
            cond = torch.where(drop_cond[:, None], self.null_text[None], cond)
        tokens = torch.stack([
            self.text_in(cond * math.sqrt(d)),  # √D: a unit vector becomes unit-variance input
            self.time_mlp(timestep_embedding(t, self.config.width).to(cond.dtype)),
            self.x_in(x.to(cond.dtype)),
            self.query.expand(x.shape[0], -1),
        ], dim=1) + self.position  # [B, 4, W]
        h = self.blocks(tokens)
        return self.out(self.norm_out(h[:, -1]))  # the query token → [B, D]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
