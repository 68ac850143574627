"""Our own diffusion prior: :class:`~clipsonic.prior.network.PriorNet` + Gaussian diffusion on embeddings.

DALL-E 2's recipe (Ramesh et al. 2022, appendix C): cosine schedule over 1000 steps, the network
predicts the clean image embedding x_0 directly (MSE on x_0), the text condition is dropped 10 %
of the time for classifier-free guidance, and sampling uses a short strided chain (64 steps).
The embedding lives in the scaled space √D · e (see network.py); samples are L2-normalised.

Directory (a pipeline's ``prior/`` component, or ``train-prior``'s ``RUN/prior/``)::

    config.json         {"format": "clipsonic-prior", "version": 1, "type": "clipsonic", "clip_model": {...},
                         "prior": PriorConfig, "training": {...}}  (base.py)
    prior.safetensors   the (EMA) weights of PriorNet
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from clipsonic.config import Config, ConfigError
from clipsonic.diffusion import SAMPLERS, DiffusionConfig, GaussianDiffusion
from clipsonic.diffusion.rng import randn_per_row
from clipsonic.encoders import ClipModelRef
from clipsonic.errors import ClipsonicError
from clipsonic.prior.base import CONFIG_NAME, Prior
from clipsonic.prior.network import PriorNet, PriorNetConfig

WEIGHTS_NAME = "prior.safetensors"
TYPE_NAME = "clipsonic"


def _prior_diffusion() -> DiffusionConfig:
    return DiffusionConfig(num_timesteps=1000, schedule="cosine", learn_sigma=False, prediction="x0",
                           loss="simple", p_uncond=0.1)


@dataclasses.dataclass(frozen=True)
class PriorConfig(Config):
    """Network, process and sampling defaults of :class:`DiffusionPrior` (DALL-E 2's choices)."""

    network: PriorNetConfig = PriorNetConfig()
    diffusion: DiffusionConfig = dataclasses.field(default_factory=_prior_diffusion)
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


def embedding_scale(dim: int) -> float:
    """√D: maps a unit CLIP vector to components of unit variance, the space the prior diffuses in."""
    return math.sqrt(dim)


class DiffusionPrior(Prior):
    """Text embedding → image embedding by sampling :class:`PriorNet` with guidance."""

    type_name = TYPE_NAME

    def __init__(self, net: PriorNet, config: PriorConfig, clip: ClipModelRef,
                 training: dict[str, Any] | None = None) -> None:
        super().__init__(clip)
        if net.config != config.network or config.network.embed_dim != clip.dim:
            raise ClipsonicError(f"prior network {net.config} does not match its config {config.network} "
                             f"or the {clip.dim}-d CLIP space")
        self.net = net.eval().requires_grad_(False)
        self.config = config
        self.diffusion = GaussianDiffusion(config.diffusion)
        self.training = dict(training or {})

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def to(self, device: str | torch.device, dtype: torch.dtype | None = None) -> DiffusionPrior:
        self.net.to(device=device, dtype=dtype)
        return self

    @torch.no_grad()
    def sample(self, texts: Sequence[str], text_emb: torch.Tensor, encoder=None, *,
               generators: Sequence[torch.Generator] | None = None, guidance_scale: float | None = None,
               steps: int | None = None) -> torch.Tensor:
        """``text_emb`` [B, D] (L2-normalised) → image embeddings [B, D]; ``texts`` and ``encoder`` unused."""
        c = self.config
        batch, dim = text_emb.shape
        if dim != self.dim:
            raise ClipsonicError(f"the prior takes {self.dim}-d text embeddings, got {dim}-d")
        device = self.device
        x_T = randn_per_row((batch, dim), generators, device)  # [B, D] in the scaled space
        x0 = self.diffusion.sample(
            self.net, (batch, dim), text_emb.to(device, torch.float32), sampler=c.sampler,
            steps=steps or c.steps, guidance_scale=c.guidance_scale if guidance_scale is None else guidance_scale,
            generator=generators[0] if generators else None, x_T=x_T, clip_denoised=False,
        )
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
        net = PriorNet(config.network)
        try:
            net.load_state_dict(load_file(str(weights)))
        except RuntimeError as exc:
            raise ClipsonicError(f"{weights}: weights do not fit {source} ({str(exc).splitlines()[0]})") from None
        clip = ClipModelRef.from_dict(data.get("clip_model") or {}, f"{source}:clip_model")
        return cls(net, config, clip, training=data.get("training"))
