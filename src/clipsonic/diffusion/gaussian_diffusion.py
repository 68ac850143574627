"""The Gaussian diffusion process (Improved DDPM): training losses and sampling for any network.

Like improved-diffusion's gaussian_diffusion.py the process owns no network: ``training_losses``
and ``sample`` take the model as an argument (contract in guidance.py). Data are [B, C, H, W]
(a log-mel is [B, 1, 64, frames]) scaled to about [-1, 1].
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from clipsonic.diffusion import posterior as P
from clipsonic.diffusion.config import DiffusionConfig
from clipsonic.diffusion.guidance import DEFAULT_GUIDANCE_SCALE, Denoiser, guided_denoiser
from clipsonic.diffusion.losses import discretized_gaussian_log_likelihood, mean_flat, min_snr_weight, normal_kl
from clipsonic.diffusion.respace import respace, space_timesteps
from clipsonic.diffusion.rng import rand, randint, randn
from clipsonic.diffusion.samplers import SAMPLERS, SPACING
from clipsonic.diffusion.schedule import Schedule, cosine_betas, linear_betas

Model = nn.Module | Callable[..., Tensor]


class GaussianDiffusion:
    """q(x_t | x_0), the posterior, p(x_{t-1} | x_t) from a model output, losses and samplers."""

    def __init__(self, config: DiffusionConfig | None = None) -> None:
        self.config = config or DiffusionConfig()
        c = self.config
        betas = cosine_betas(c.num_timesteps, c.cosine_s) if c.schedule == "cosine" else linear_betas(c.num_timesteps)
        self.schedule = Schedule(betas)
        self._respaced: dict[tuple[int, str], Schedule] = {}

    @property
    def num_timesteps(self) -> int:
        return self.config.num_timesteps

    # --- the process ------------------------------------------------------------------------
    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t ~ q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I), given the noise. t: [B]."""
        return P.q_sample(self.schedule, x0, t, noise)

    def q_posterior_mean_variance(self, x0: Tensor, xt: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(mean, variance, log variance) of q(x_{t-1} | x_t, x_0), each [B, C, H, W]."""
        return P.q_posterior_mean_variance(self.schedule, x0, xt, t)

    def p_mean_variance(
        self, model_out: Tensor, xt: Tensor, t: Tensor, clip_denoised: bool = True
    ) -> dict[str, Tensor]:
        """p(x_{t-1} | x_t) from a raw model output [B, 2C or C, H, W] at original steps t [B].

        Returns ``mean``, ``variance``, ``log_variance``, ``pred_x0`` (clamped to [-1, 1] when
        ``clip_denoised``) and ``eps`` (the prediction as eps, before clamping).
        """
        c = self.config
        pred, var_values = P.split_output(model_out, xt.shape[1], c.learn_sigma)
        x0 = P.x0_from_prediction(c.prediction, self.schedule, xt, t, pred)
        out = P.p_mean_variance(self.schedule, xt, t, x0, var_values, clip_denoised)
        out["eps"] = P.eps_from_prediction(c.prediction, self.schedule, xt, t, pred)
        return out

    def respaced(self, steps: int, spacing: str = "linspace") -> Schedule:
        """The K = ``steps`` chain over space_timesteps(T, K, spacing) (cached)."""
        key = (steps, spacing)
        if key not in self._respaced:
            grid = space_timesteps(self.num_timesteps, steps, spacing)
            self._respaced[key] = respace(self.schedule, grid)
        return self._respaced[key]

    # --- training ---------------------------------------------------------------------------
    def training_losses(
        self,
        model: Model,
        x0: Tensor,
        cond: Tensor,
        t: Tensor | None = None,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
        cond_seq: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Per-example losses [B] for data x0 [B, C, H, W] and conditions cond [B, D] (and, when given, frame
        sequences cond_seq [B, N, D], passed to the model as ``cond_seq=`` and dropped with cond).

        Draws (with ``generator``, in this order) t ~ U{0..T-1} unless given, noise unless given,
        and the guidance drop mask ~ Bernoulli(p_uncond). Returns:
        ``mse``  mean squared error of the prediction target (eps, v or x_0), min-SNR weighted if set;
        ``vlb``  (hybrid only) L_t in bits/dim: KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t)) for t > 0,
                 the discretised decoder NLL -log p(x_0|x_1) at t = 0, with the mean stop-gradiented
                 so that only the variance learns from it;
        ``loss`` mse + vlb_weight * T * vlb (improved-diffusion's hybrid loss);
        ``t``, ``dropped`` the steps and the drop mask used, for logging and checks.
        """
        c = self.config
        batch, device = x0.shape[0], x0.device
        if cond.shape[0] != batch:
            raise ValueError(f"got {batch} examples but {cond.shape[0]} conditions")
        if t is None:
            t = randint(self.num_timesteps, (batch,), generator, device)
        t = t.to(device=device, dtype=torch.long)
        if noise is None:
            noise = randn(x0.shape, generator, device, x0.dtype)
        dropped = rand((batch,), generator, device) < c.p_uncond

        xt = self.q_sample(x0, t, noise)
        extra = {} if cond_seq is None else {"cond_seq": cond_seq}  # models without the argument keep working
        out = model(xt, t, cond, dropped, **extra).to(x0.dtype)
        pred, var_values = P.split_output(out, x0.shape[1], c.learn_sigma)

        target = {"epsilon": noise, "x0": x0, "v": P.v_from_x0_eps(self.schedule, x0, t, noise)}[c.prediction]
        mse = mean_flat((target - pred) ** 2)
        if c.min_snr_gamma is not None:
            snr = self.schedule.at("snr", t, x0).flatten()
            mse = mse * min_snr_weight(snr, c.min_snr_gamma, c.prediction)
        terms = {"mse": mse, "t": t, "dropped": dropped}
        if c.loss == "hybrid":
            terms["vlb"] = self._vlb_bits(x0, xt, t, pred.detach(), var_values)
            terms["loss"] = mse + c.vlb_weight * self.num_timesteps * terms["vlb"]
        else:
            terms["loss"] = mse
        return terms

    def _vlb_bits(self, x0: Tensor, xt: Tensor, t: Tensor, pred: Tensor, var_values: Tensor) -> Tensor:
        """L_t in bits/dim for a detached prediction (the stop-gradient of the hybrid loss). [B]."""
        x0_hat = P.x0_from_prediction(self.config.prediction, self.schedule, xt, t, pred)
        model = P.p_mean_variance(self.schedule, xt, t, x0_hat, var_values, clip_denoised=False)
        true_mean, _, true_log_variance = self.q_posterior_mean_variance(x0, xt, t)
        kl = mean_flat(normal_kl(true_mean, true_log_variance, model["mean"], model["log_variance"]))
        nll = -mean_flat(discretized_gaussian_log_likelihood(x0, model["mean"], 0.5 * model["log_variance"]))
        return torch.where(t == 0, nll, kl) / math.log(2.0)  # nats -> bits

    # --- sampling ---------------------------------------------------------------------------
    @torch.no_grad()
    def sample(
        self,
        model: Model,
        shape: tuple[int, ...],
        cond: Tensor,
        *,
        sampler: str = "ddpm",
        steps: int = 1000,
        guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
        generator: torch.Generator | None = None,
        eta: float = 0.0,
        clip_denoised: bool = True,
        progress: Callable[[int, int], None] | None = None,
        x_T: Tensor | None = None,
        guidance_rescale: float = 0.0,
        spacing: str | None = None,
        x_init: Tensor | None = None,
        strength: float = 1.0,
        known: Tensor | None = None,
        known_mask: Tensor | None = None,
    ) -> Tensor:
        """Generate x_0 [shape] = [B, C, H, W] for conditions cond [B, D], on cond's device.

        ``steps`` model evaluations over the respaced chain space_timesteps(T, steps, SPACING[sampler])
        (original steps 0, 4, ..., 3999 for T = 4000, 1000 ddpm steps); classifier-free
        guidance with ``guidance_scale`` and the config's formula (one batched forward of 2B, or B
        when the mix is a single branch). ``eta`` is DDIM's; ``x_T`` replaces the initial noise (float32
        by default; the sample keeps x_T's dtype). ``guidance_rescale``: guidance.rescaled_guidance's strength.
        ``spacing``: the grid (respace.space_timesteps) instead of SPACING[sampler] ("trailing": a distilled model's).

        Editing (no retraining): with ``x_init`` [shape] the chain runs only its last round(``strength`` K) steps,
        from x_init noised by q(x_t | x_0) to the first of them with x_T (or the generator's) noise: SDEdit (Meng et
        al. 2022). ``strength`` 0 returns x_init (clamped to [-1, 1]), 1 the whole chain. ``known`` [shape] with
        ``known_mask`` (broadcastable to it, 1 = keep) inpaints: at every step the x_0 estimate takes ``known`` where
        the mask is 1. This replaces x_0 rather than resampling x_t as RePaint does (Lugmayr et al. 2022): the
        network still sees the kept region only through x_t, but since every sampler's last step returns its x_0
        estimate, the kept region of the result equals ``known`` (clamped to [-1, 1]) exactly.
        Put the model in eval mode first.
        """
        # 1. Check inputs
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; choose one of {sorted(SAMPLERS)}")
        shape = tuple(shape)
        if len(shape) < 2 or cond.ndim != 2 or cond.shape[0] != shape[0]:
            raise ValueError(
                "need shape [B, C, ...] and cond [B, D] with the same B, "
                f"got {list(shape)} and {list(cond.shape)}"
            )
        for name, given in (("x_T", x_T), ("x_init", x_init), ("known", known)):
            if given is not None and tuple(given.shape) != shape:
                raise ValueError(f"{name} has shape {list(given.shape)}, expected {list(shape)}")
        if (known is None) != (known_mask is None) or not 0.0 <= strength <= 1.0:
            raise ValueError(f"need known and known_mask together, and strength in [0, 1] (got {strength})")
        c = self.config
        # 2. The chain and the guided network
        schedule = self.respaced(steps, spacing or SPACING[sampler])
        denoise = guided_denoiser(
            model, cond, guidance_scale=guidance_scale, formula=c.guidance_formula, prediction=c.prediction,
            schedule=self.schedule, learn_sigma=c.learn_sigma, rescale=guidance_rescale,
        )
        if known is not None:
            denoise = _keep_known(denoise, known.to(cond.device).clamp(-1, 1), known_mask.to(cond.device) > 0.5)
        # 3. Initial noise x_T ~ N(0, I); SDEdit: x_init noised to the first of the last round(strength K) steps
        x = randn(shape, generator, cond.device) if x_T is None else x_T.to(cond.device)
        if x_init is not None:
            n = round(strength * len(schedule))
            if n == 0:
                return x_init.to(cond.device).clamp(-1, 1)
            schedule = Schedule(schedule.betas[:n], schedule.timesteps[:n])  # the same chain's last n steps
            x = self.q_sample(x_init.to(x), schedule.timesteps[n - 1].expand(shape[0]).to(x.device), x)
        # 4. Denoise
        return SAMPLERS[sampler](
            denoise, x, schedule, generator=generator, eta=eta, clip_denoised=clip_denoised, progress=progress
        )


def _keep_known(denoise: Denoiser, known: Tensor, keep: Tensor) -> Denoiser:
    """``denoise`` whose x_0 estimate is ``known`` where ``keep`` (bool, broadcastable) is set (see sample)."""

    def wrapped(x: Tensor, t: int) -> tuple[Tensor, Tensor | None]:
        x0, var_values = denoise(x, t)
        return torch.where(keep, known.to(x0.dtype), x0), var_values

    return wrapped
