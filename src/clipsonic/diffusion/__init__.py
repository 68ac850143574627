"""The mel diffusion process: Improved DDPM with classifier-free guidance (network-agnostic).

    from clipsonic.diffusion import DiffusionConfig, GaussianDiffusion, SAMPLERS
    diff = GaussianDiffusion(DiffusionConfig())
    losses = diff.training_losses(model, x0, cond)          # dict of [B] tensors; losses["loss"].mean()
    mels = diff.sample(model, (B, 1, 64, 128), cond, sampler="ddpm", steps=1000, guidance_scale=1.5)
    longer = diff.sample(WindowedModel(model, 128), (B, 1, 64, 1024), cond)  # MultiDiffusion windows
"""

from clipsonic.diffusion.config import DiffusionConfig
from clipsonic.diffusion.gaussian_diffusion import GaussianDiffusion
from clipsonic.diffusion.guidance import DEFAULT_GUIDANCE_SCALE, guide, guided_denoiser
from clipsonic.diffusion.respace import respace, space_timesteps
from clipsonic.diffusion.samplers import SAMPLERS
from clipsonic.diffusion.windows import WindowedModel

__all__ = ["DEFAULT_GUIDANCE_SCALE", "SAMPLERS", "DiffusionConfig", "GaussianDiffusion", "WindowedModel", "guide",
           "guided_denoiser", "respace", "space_timesteps"]
