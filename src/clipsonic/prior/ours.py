"""Our own diffusion prior: CLIP text embedding → CLIP image embedding (DALL-E 2's prior, small).

:class:`PriorNet` is DALL-E 2's decoder-only transformer (Ramesh et al. 2022, section 2.1) on the pooled CLIP text
embedding only (karlo.py's ``PriorTransformer`` reads the 77 token states). :class:`DiffusionPrior` samples it on
DALL-E 2's recipe (appendix C): cosine schedule over 1000 steps, MSE on x_0, the text dropped 10 % of the time, 64
strided sampling steps, in the scaled space ``x = √D · e`` (unit-variance components, DALLE2-pytorch's
``image_embed_scale``), ``e`` the L2-normalised CLIP image embedding. Directory: ``config.json`` (base.py;
``"prior"``: PriorConfig, ``"training"``) and ``prior.safetensors``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from clipsonic.config import Config, ConfigError
from clipsonic.diffusion import SAMPLERS, DiffusionConfig, GaussianDiffusion
from clipsonic.diffusion.rng import randn_per_row
from clipsonic.encoders import ClipModelRef
from clipsonic.errors import ClipsonicError
from clipsonic.models.layers import timestep_embedding
from clipsonic.models.weights import load_checked
from clipsonic.prior.base import CONFIG_NAME, Prior

WEIGHTS_NAME = "prior.safetensors"


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
        if self.depth > 64:  # DALL-E 2's prior has 24 layers; more is a typo, and each one is built before loading
            raise ConfigError(f"PriorNetConfig.depth must be at most 64, got {self.depth}")
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
    return dataclasses.replace(PRIOR_PRESETS[name], embed_dim=embed_dim)


class PriorNet(nn.Module):
    """Predicts the clean scaled image embedding x_0 ``[B, D]`` from x_t, t and a text embedding; for guidance
    (as in MelUNet) a learned ``null_text`` replaces the text embedding where ``drop_cond`` is set."""

    def __init__(self, config: PriorNetConfig) -> None:
        super().__init__()
        self.config = config
        d, w = config.embed_dim, config.width
        self.text_in = nn.Linear(d, w)
        self.x_in = nn.Linear(d, w)
        self.time_mlp = nn.Sequential(nn.Linear(w, w), nn.SiLU(), nn.Linear(w, w))
        # In place: loading builds on the meta device, where out-of-place arithmetic imports torch._dynamo (2.5 s).
        self.query = nn.Parameter(torch.randn(w).mul_(0.02))
        self.position = nn.Parameter(torch.randn(4, w).mul_(0.02))  # [text, time, x_t, query]
        self.null_text = nn.Parameter(torch.randn(d).div_(math.sqrt(d)))  # unit-norm, like a CLIP vector
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


@dataclasses.dataclass(frozen=True)
class PriorConfig(Config):
    """Network, process and sampling defaults of :class:`DiffusionPrior` (DALL-E 2's choices)."""

    network: PriorNetConfig = PriorNetConfig()
    diffusion: DiffusionConfig = DiffusionConfig(num_timesteps=1000, schedule="cosine", learn_sigma=False,
                                                 prediction="x0", loss="simple", p_uncond=0.1)
    sampler: str = "ddim"  # deterministic given the initial noise: one seed, one embedding
    steps: int = 64  # DALL-E 2 samples its prior with 64 strided steps
    # Guidance of the prior itself (not of the mel model). 1.0 = the plain conditional model;
    # DALL-E 2 and Karlo guide more (Karlo: 4.0) at some cost in diversity.
    guidance_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"PriorConfig.sampler must be one of {sorted(SAMPLERS)}, got {self.sampler!r}")
        if not isinstance(self.steps, int) or not 1 <= self.steps <= self.diffusion.num_timesteps:
            raise ConfigError(f"PriorConfig.steps must be in 1..{self.diffusion.num_timesteps}, got {self.steps!r}")
        if self.guidance_scale < 0:
            raise ConfigError(f"PriorConfig.guidance_scale must be >= 0, got {self.guidance_scale}")
        if self.diffusion.learn_sigma:
            raise ConfigError("the prior network predicts one vector: use a DiffusionConfig with learn_sigma=False")


class DiffusionPrior(Prior):
    """Text embedding → image embedding by sampling :class:`PriorNet` with guidance."""

    type_name = "clipsonic"

    def __init__(self, net: PriorNet, config: PriorConfig, clip: ClipModelRef,
                 training: dict[str, Any] | None = None) -> None:
        if net.config != config.network or config.network.embed_dim != clip.dim:
            raise ClipsonicError(f"prior network {net.config} does not match its config {config.network} "
                                 f"or the {clip.dim}-d CLIP space")
        super().__init__(net, clip)
        self.config = config
        self.diffusion = GaussianDiffusion(config.diffusion)
        self.training = dict(training or {})

    @torch.no_grad()
    def sample(self, texts: Sequence[str], text_emb: torch.Tensor, encoder=None, *,
               generators: Sequence[torch.Generator] | None = None, guidance_scale: float | None = None,
               steps: int | None = None) -> torch.Tensor:
        """``text_emb`` [B, D] (L2-normalised) → image embeddings [B, D]; ``texts`` and ``encoder`` unused."""
        c, shape = self.config, tuple(text_emb.shape)
        x_T = randn_per_row(shape, generators, self.device)  # [B, D] in the scaled space
        x0 = self.diffusion.sample(self.net, shape, text_emb.to(self.device, torch.float32), sampler=c.sampler,
                                   steps=steps or c.steps, x_T=x_T, clip_denoised=False,
                                   guidance_scale=c.guidance_scale if guidance_scale is None else guidance_scale,
                                   generator=generators[0] if generators else None)
        return torch.nn.functional.normalize(x0.float(), dim=-1).cpu()

    def _save_weights(self, directory: Path) -> dict[str, Any]:
        state = {k: v.detach().float().contiguous().cpu() for k, v in self.net.state_dict().items()}
        save_file(state, str(directory / WEIGHTS_NAME), metadata={"format": "pt", "class": "PriorNet"})
        return {"prior": self.config.to_dict(), "training": self.training}

    @classmethod
    def from_config_dict(cls, data: dict[str, Any], directory: Path) -> DiffusionPrior:
        """Load from a directory whose config.json holds ``data``."""
        source = str(directory / CONFIG_NAME)
        if "prior" not in data:
            raise ClipsonicError(f"{source}: no \"prior\" entry; re-export the prior")
        config = PriorConfig.from_dict(data["prior"], source=f"{source}:prior")
        weights = directory / WEIGHTS_NAME
        if not weights.is_file():
            raise ClipsonicError(f"{directory}: no {WEIGHTS_NAME}; the prior directory is incomplete")
        net = load_checked(lambda: PriorNet(config.network), weights, source, "prior")
        clip = ClipModelRef.from_dict(data.get("clip_model") or {}, f"{source}:clip_model")
        return cls(net, config, clip, training=data.get("training"))
