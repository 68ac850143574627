"""The diffusion process's config: schedule, parametrisation, loss and guidance convention."""

from __future__ import annotations

import dataclasses
from typing import Literal

from clipsonic.config import Config


@dataclasses.dataclass(frozen=True)
class DiffusionConfig(Config):
    """Improved DDPM (Nichol & Dhariwal 2021) as CLIPSonic trains it; defaults are the paper's."""

    # The paper trains with 4000 steps and samples with 1000 (respaced, see respace.py).
    num_timesteps: int = 4000
    # "cosine": alpha_bar(t) = f(t)/f(0), f(t) = cos^2(((t/T + s)/(1 + s)) pi/2), beta <= 0.999.
    # "linear": Ho et al.'s 1e-4 .. 0.02, scaled by 1000/T as improved-diffusion does.
    schedule: Literal["cosine", "linear"] = "cosine"
    # s keeps beta_0 from vanishing (0.008 in the paper: sqrt(beta_0) is about one 8-bit bin).
    cosine_s: float = 0.008
    # The network outputs [eps, v] with v in [-1, 1] interpolating log beta~_t .. log beta_t.
    learn_sigma: bool = True
    # What the first C output channels mean. "epsilon" is the paper's; "v" (Salimans & Ho 2022)
    # learned much faster for CPU-sized models (docs/benchmarks.md, "Objective on a CPU").
    prediction: Literal["epsilon", "v", "x0"] = "epsilon"
    # "hybrid": L_simple + lambda L_vlb (the variance learns from L_vlb only); "simple": MSE only.
    loss: Literal["hybrid", "simple"] = "hybrid"
    # lambda for T = 1000; as in improved-diffusion the per-step VLB term is scaled by T, i.e.
    # loss = mse + vlb_weight * T * L_t (the VLB is a sum over T steps; we sample one).
    vlb_weight: float = 0.001
    # Probability of training on the learned null condition (classifier-free guidance).
    p_uncond: float = 0.1
    # Min-SNR-gamma weighting of the MSE (Hang et al. 2023), e.g. 5.0; None = unweighted.
    min_snr_gamma: float | None = None
    # "cfg":          eps = eps_u + w (eps_c - eps_u)  (w = 0 unconditional, w = 1 conditional)
    # "cfg-plus-one": eps = eps_c + w (eps_c - eps_u)  (w = 0 conditional; Imagen/GLIDE style)
    guidance_formula: Literal["cfg", "cfg-plus-one"] = "cfg"
    # Set by `clipsonic distill` (train/distill.py): the network is a student that samples with this many DDIM steps
    # on the "trailing" grid, one conditional pass each, the guidance (w, rescale) folded in. None: guided sampling.
    distilled_steps: int | None = None
    distilled_guidance_scale: float | None = None
    distilled_guidance_rescale: float | None = None

    def __post_init__(self) -> None:
        # above 100000 the schedule's arrays alone run to gigabytes: a typo, not a model
        if not isinstance(self.num_timesteps, int) or not 2 <= self.num_timesteps <= 100_000:
            raise ValueError(f"num_timesteps must be an integer in 2..100000, got {self.num_timesteps!r}")
        if not self.cosine_s > 0:
            raise ValueError(f"cosine_s must be > 0, got {self.cosine_s}")
        if not 0.0 <= self.p_uncond < 1.0:
            raise ValueError(f"p_uncond must be in [0, 1), got {self.p_uncond}")
        if self.vlb_weight < 0:
            raise ValueError(f"vlb_weight must be >= 0, got {self.vlb_weight}")
        if self.min_snr_gamma is not None and not self.min_snr_gamma > 0:
            raise ValueError(f"min_snr_gamma must be > 0 or None, got {self.min_snr_gamma}")
        if self.loss == "hybrid" and not self.learn_sigma:
            raise ValueError(
                "loss='hybrid' needs learn_sigma=True (its VLB term trains only the variance); "
                "use loss='simple' with learn_sigma=False"
            )
        distilled = (self.distilled_steps, self.distilled_guidance_scale, self.distilled_guidance_rescale)
        if distilled.count(None) not in (0, 3) or (self.distilled_steps is not None and self.distilled_steps < 1):
            raise ValueError(f"distilled_steps (>= 1), distilled_guidance_scale and distilled_guidance_rescale are set "
                             f"together or not at all, got {distilled}")

    @property
    def conditional_scale(self) -> float:
        """The guidance scale at which the formula is the conditional branch alone (one pass of B)."""
        return 1.0 if self.guidance_formula == "cfg" else 0.0
