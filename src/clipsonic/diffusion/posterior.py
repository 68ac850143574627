"""The Gaussians of the process as pure functions of a :class:`Schedule` (improved-diffusion maths).

``i`` is an index into the schedule: an int (the whole batch at one step, sampling) or a
LongTensor [B] (training). Tensors are [B, C, H, W]. ``var_values`` is the network's variance
channel v in [-1, 1] (learned range), or None for a fixed variance.
"""

from __future__ import annotations

import torch
from torch import Tensor

from clipsonic.diffusion.schedule import Schedule

Index = Tensor | int


def q_sample(s: Schedule, x0: Tensor, i: Index, noise: Tensor) -> Tensor:
    """Sample q(x_t | x_0): x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) noise."""
    return s.at("sqrt_alphas_cumprod", i, x0) * x0 + s.at("sqrt_one_minus_alphas_cumprod", i, x0) * noise


def q_posterior_mean_variance(s: Schedule, x0: Tensor, xt: Tensor, i: Index) -> tuple[Tensor, Tensor, Tensor]:
    """Mean, variance and (clipped) log variance of q(x_{t-1} | x_t, x_0)."""
    mean = s.at("posterior_mean_coef1", i, xt) * x0 + s.at("posterior_mean_coef2", i, xt) * xt
    variance = _as_tensor(s.at("posterior_variance", i, xt), xt)
    log_variance = _as_tensor(s.at("posterior_log_variance_clipped", i, xt), xt)
    return mean, variance.expand_as(xt), log_variance.expand_as(xt)


def v_from_x0_eps(s: Schedule, x0: Tensor, i: Index, eps: Tensor) -> Tensor:
    """The v target of Salimans & Ho (2022): v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x_0."""
    return s.at("sqrt_alphas_cumprod", i, x0) * eps - s.at("sqrt_one_minus_alphas_cumprod", i, x0) * x0


def eps_from_prediction(prediction: str, s: Schedule, xt: Tensor, i: Index, pred: Tensor) -> Tensor:
    """The network's first C channels as eps. For v: eps = sqrt(alpha_bar) v + sqrt(1 - alpha_bar) x_t;
    for x_0: eps = (sqrt(1/alpha_bar) x_t - x_0) / sqrt(1/alpha_bar - 1)."""
    if prediction == "epsilon":
        return pred
    if prediction == "v":
        return s.at("sqrt_alphas_cumprod", i, xt) * pred + s.at("sqrt_one_minus_alphas_cumprod", i, xt) * xt
    if prediction == "x0":
        return (s.at("sqrt_recip_alphas_cumprod", i, xt) * xt - pred) / s.at("sqrt_recipm1_alphas_cumprod", i, xt)
    raise ValueError(f"unknown prediction {prediction!r}")


def x0_from_prediction(prediction: str, s: Schedule, xt: Tensor, i: Index, pred: Tensor) -> Tensor:
    """The network's first C channels as x_0. For v: x_0 = sqrt(alpha_bar) x_t - sqrt(1 - alpha_bar) v;
    for eps: x_0 = sqrt(1/alpha_bar) x_t - sqrt(1/alpha_bar - 1) eps."""
    if prediction == "epsilon":
        return s.at("sqrt_recip_alphas_cumprod", i, xt) * xt - s.at("sqrt_recipm1_alphas_cumprod", i, xt) * pred
    if prediction == "v":
        return s.at("sqrt_alphas_cumprod", i, xt) * xt - s.at("sqrt_one_minus_alphas_cumprod", i, xt) * pred
    if prediction == "x0":
        return pred
    raise ValueError(f"unknown prediction {prediction!r}")


def split_output(out: Tensor, channels: int, learn_sigma: bool) -> tuple[Tensor, Tensor | None]:
    """[B, 2C, H, W] -> (prediction [B, C, H, W], v [B, C, H, W]); [B, C, H, W] -> (prediction, None)."""
    expected = 2 * channels if learn_sigma else channels
    if out.ndim < 2 or out.shape[1] != expected:
        raise ValueError(
            f"the model returned shape {list(out.shape)} but DiffusionConfig(learn_sigma={learn_sigma}) "
            f"expects {expected} channels for {channels}-channel data"
            + (" ([eps, v] per channel)" if learn_sigma else "")
        )
    if not learn_sigma:
        return out, None
    return out[:, :channels], out[:, channels:]


def p_mean_variance(
    s: Schedule, xt: Tensor, i: Index, x0: Tensor, var_values: Tensor | None, clip_denoised: bool
) -> dict[str, Tensor]:
    """p(x_{t-1} | x_t) = N(mu~(x_t, x0_hat), sigma^2): the posterior mean at the predicted x_0.

    ``x0`` is the network's x_0 prediction; with ``clip_denoised`` it is clamped to [-1, 1] first.
    Learned range: log sigma^2 = frac log beta_t + (1 - frac) log beta~_t, frac = (v + 1)/2, with the
    respaced beta'/beta~' in a respaced chain. Fixed (var_values None): beta~_t ("fixed small").
    Returns ``mean``, ``variance``, ``log_variance`` and ``pred_x0`` (after clamping).
    """
    if clip_denoised:
        x0 = x0.clamp(-1, 1)
    mean, _, log_variance = q_posterior_mean_variance(s, x0, xt, i)  # log beta~_t
    if var_values is not None:
        frac = (var_values + 1) / 2
        log_variance = frac * _as_tensor(s.at("log_betas", i, xt), xt) + (1 - frac) * log_variance
    return {"mean": mean, "variance": log_variance.exp(), "log_variance": log_variance, "pred_x0": x0}


def _as_tensor(value: Tensor | float, like: Tensor) -> Tensor:
    dtype = torch.float64 if like.dtype == torch.float64 else torch.float32  # as Schedule.at's tensors
    return torch.as_tensor(value, dtype=dtype, device=like.device)
