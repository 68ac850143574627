"""clipsonic.diffusion: config, schedule, respacing, posterior, losses.

Cross-checked against diffusers' schedulers (independent float32 implementations) and closed forms
(torch.distributions); guidance is in test_diffusion_guidance.py, samplers in test_diffusion_samplers.py.
"""

import math

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from torch.distributions import Normal, kl_divergence

from clipsonic.config import ConfigError
from clipsonic.diffusion import DiffusionConfig, GaussianDiffusion, respace, space_timesteps
from clipsonic.diffusion.losses import approx_standard_normal_cdf, discretized_gaussian_log_likelihood, normal_kl
from clipsonic.diffusion.posterior import split_output

T = 4000


def diffusers_ddpm(**kw) -> DDPMScheduler:
    args = dict(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2", variance_type="learned_range",
                timestep_spacing="linspace")
    return DDPMScheduler(**(args | kw))


def reference_abar() -> torch.Tensor:
    """alpha_bar from diffusers' (float32) betas, accumulated in float64."""
    return torch.cumprod(1 - diffusers_ddpm().betas.double(), 0)


def bayes_posterior(abar: torch.Tensor, x0, xt, t: int):
    """q(x_{t-1} | x_t, x_0) by multiplying the two Gaussians: an independent derivation.

    At t = 0, x_{-1} is x_0 itself: a point mass (variance 0)."""
    if t == 0:
        return x0 + 0 * xt, torch.tensor(0.0, dtype=torch.float64), 1 - abar[0]
    a_prev = abar[t - 1] if t > 0 else torch.tensor(1.0, dtype=torch.float64)
    alpha, beta = abar[t] / a_prev, 1 - abar[t] / a_prev
    precision = alpha / beta + 1 / (1 - a_prev)
    mean = (alpha.sqrt() / beta * xt + a_prev.sqrt() / (1 - a_prev) * x0) / precision
    return mean, 1 / precision, beta


# --- config -------------------------------------------------------------------------------------
def test_config_round_trip_and_rejections():
    cfg = DiffusionConfig(prediction="v", min_snr_gamma=5.0)
    assert DiffusionConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="unknown key"):
        DiffusionConfig.from_dict({"num_steps": 10})
    with pytest.raises(ConfigError, match="prediction"):
        DiffusionConfig.from_dict({"prediction": "score"})
    with pytest.raises(ConfigError, match="learn_sigma"):
        DiffusionConfig.from_dict({"learn_sigma": False})  # hybrid loss needs the variance
    with pytest.raises(ConfigError, match="p_uncond"):
        DiffusionConfig.from_dict({"p_uncond": 1.0})
    assert DiffusionConfig(learn_sigma=False, loss="simple").learn_sigma is False


# --- schedule and respacing --------------------------------------------------------------------
def test_cosine_schedule_matches_diffusers():
    ref = diffusers_ddpm()
    s = GaussianDiffusion().schedule
    assert s.betas.dtype == torch.float64 and len(s) == T
    torch.testing.assert_close(s.betas.float(), ref.betas, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(s.alphas_cumprod.float(), ref.alphas_cumprod, rtol=2e-4, atol=1e-9)
    assert s.betas.max() == pytest.approx(0.999)  # the clip at the last step
    # the paper's closed form: alpha_bar_t = f(t+1)/f(0) below the clipped last step
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    for t in (0, 1, 1000, 3998):
        assert float(s.alphas_cumprod[t]) == pytest.approx(f((t + 1) / T) / f(0), rel=1e-10)


def test_linear_schedule_matches_scaled_diffusers():
    s = GaussianDiffusion(DiffusionConfig(schedule="linear")).schedule
    ref = DDPMScheduler(num_train_timesteps=T, beta_start=1e-4 / 4, beta_end=0.02 / 4)
    torch.testing.assert_close(s.betas.float(), ref.betas, rtol=1e-5, atol=1e-9)


def test_respacing_4000_to_1000_picks_the_documented_steps():
    steps = space_timesteps(T, 1000)
    ref = diffusers_ddpm()
    ref.set_timesteps(1000)
    assert torch.equal(steps, ref.timesteps.flip(0))
    # improved-diffusion's space_timesteps(4000, "1000"): round(i * 3999/999), accumulated
    cur, taken = 0.0, []
    for _ in range(1000):
        taken.append(round(cur))
        cur += (T - 1) / 999
    assert steps.tolist() == taken
    assert steps[0] == 0 and steps[1] == 4 and steps[-1] == T - 1 and len(set(steps.tolist())) == 1000
    gaps = np.diff(steps.numpy())
    assert set(gaps.tolist()) == {4, 5} and (gaps == 5).sum() == 3
    assert torch.equal(space_timesteps(T, T), torch.arange(T))
    assert space_timesteps(T, 1).tolist() == [0]
    for bad in (0, T + 1):
        with pytest.raises(ValueError, match="steps"):
            space_timesteps(T, bad)


def improved_diffusion_space_timesteps(num_timesteps: int, section_counts: list[int]) -> list[int]:
    """improved-diffusion's respace.space_timesteps rule (its ``"ddimN"`` form aside), reimplemented:
    split the T steps into len(section_counts) near-equal sections (the first T % n one step longer); in a section
    of `size` steps take `count` of them by adding the stride (size - 1)/(count - 1) to a running float and
    rounding it (Python's round, half to even). Sorted, as its set is used."""
    size_per, extra = divmod(num_timesteps, len(section_counts))
    start, taken = 0, []
    for i, count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        cur = 0.0
        for _ in range(count):
            taken.append(start + round(cur))
            cur += stride
        start += size
    return sorted(set(taken))


def test_linspace_spacing_vs_improved_diffusions_for_every_k():
    """The counts respace.space_timesteps' docstring states: its "linspace" grid (= diffusers') differs from
    improved-diffusion's space_timesteps(4000, "K") for 1263 K, by one step, only where i (T - 1)/(K - 1) is a tie."""
    differing, most_steps = [], 0
    for k in range(1, T + 1):
        ours, theirs = space_timesteps(T, k).tolist(), improved_diffusion_space_timesteps(T, [k])
        assert len(theirs) == k
        diff = [(i, a, b) for i, (a, b) in enumerate(zip(ours, theirs, strict=True)) if a != b]
        if diff:
            differing.append(k)
            most_steps = max(most_steps, len(diff))
            assert all(abs(a - b) == 1 and 2 * (i * (T - 1) % (k - 1)) == k - 1 for i, a, b in diff), k
    assert len(differing) == 1263 and differing[0] == 31 and most_steps == 110
    assert not {1, 2, 8, 25, 50, 100, 250, 500, 1000, 2000, 4000} & set(differing)
    assert improved_diffusion_space_timesteps(300, [10, 15, 20])[:3] == [0, 11, 22]  # its docstring's example runs


def test_respaced_betas_keep_alpha_bar_at_the_chosen_steps():
    full = GaussianDiffusion().schedule
    steps = space_timesteps(T, 50)
    r = respace(full, steps)
    assert torch.equal(r.timesteps, steps)
    torch.testing.assert_close(r.alphas_cumprod, full.alphas_cumprod[steps], rtol=1e-9, atol=0)
    abar = full.alphas_cumprod[steps]
    expected = 1 - abar / torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    torch.testing.assert_close(r.betas, expected, rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="increasing"):
        respace(full, torch.tensor([5, 3]))


# --- the process --------------------------------------------------------------------------------
def test_q_sample_and_v_target_match_diffusers():
    diff = GaussianDiffusion(DiffusionConfig(prediction="v"))
    ref = diffusers_ddpm()
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(4, 1, 8, 8, generator=g), torch.randn(4, 1, 8, 8, generator=g)
    t = torch.tensor([0, 17, 2000, 3999])
    torch.testing.assert_close(diff.q_sample(x0, t, noise), ref.add_noise(x0, noise, t), rtol=1e-5, atol=1e-5)
    from clipsonic.diffusion.posterior import v_from_x0_eps

    torch.testing.assert_close(
        v_from_x0_eps(diff.schedule, x0, t, noise), ref.get_velocity(x0, noise, t), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("t", [0, 1, 250, 3998])
def test_posterior_matches_bayes_rule(t):
    diff = GaussianDiffusion()
    g = torch.Generator().manual_seed(t)
    x0 = torch.randn(2, 1, 4, 4, generator=g, dtype=torch.float64)
    xt = torch.randn(2, 1, 4, 4, generator=g, dtype=torch.float64)
    mean, var, log_var = diff.q_posterior_mean_variance(x0, xt, torch.full((2,), t))
    ref_mean, ref_var, _ = bayes_posterior(reference_abar(), x0, xt, t)
    torch.testing.assert_close(mean, ref_mean.expand_as(mean), rtol=1e-5, atol=1e-7)
    if t > 0:
        torch.testing.assert_close(var, ref_var.expand_as(var), rtol=1e-5, atol=0)
        torch.testing.assert_close(log_var, var.log())
    else:  # beta~_0 = 0: its log is clipped to log beta~_1
        assert float(var.max()) == 0.0
        assert torch.allclose(log_var, diff.schedule.posterior_variance[1].log().expand_as(log_var))


@pytest.mark.parametrize("prediction", ["epsilon", "v", "x0"])
def test_p_mean_variance_predictions_agree(prediction):
    """The same denoiser expressed as eps, v or x_0 gives the same p(x_{t-1} | x_t)."""
    diff = GaussianDiffusion(DiffusionConfig(prediction=prediction))
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.rand(3, 1, 4, 4, generator=g) * 2 - 1, torch.randn(3, 1, 4, 4, generator=g)
    var = torch.rand(3, 1, 4, 4, generator=g) * 2 - 1
    t = torch.tensor([5, 900, 3000])
    xt = diff.q_sample(x0, t, noise)
    from clipsonic.diffusion.posterior import v_from_x0_eps

    pred = {"epsilon": noise, "x0": x0, "v": v_from_x0_eps(diff.schedule, x0, t, noise)}[prediction]
    out = diff.p_mean_variance(torch.cat([pred, var], 1), xt, t, clip_denoised=False)
    torch.testing.assert_close(out["pred_x0"], x0, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out["eps"], noise, rtol=1e-4, atol=1e-4)
    true_mean, _, _ = diff.q_posterior_mean_variance(x0, xt, t)
    torch.testing.assert_close(out["mean"], true_mean, rtol=1e-4, atol=1e-5)
    frac = (var + 1) / 2
    s = diff.schedule
    max_log, min_log = s.log_betas[t].view(-1, 1, 1, 1), s.posterior_log_variance_clipped[t].view(-1, 1, 1, 1)
    expected = frac * max_log + (1 - frac) * min_log
    torch.testing.assert_close(out["log_variance"], expected.float())


def test_model_output_channels_are_checked():
    with pytest.raises(ValueError, match="learn_sigma=True.*2 channels"):
        split_output(torch.zeros(2, 1, 4, 4), 1, True)
    with pytest.raises(ValueError, match="learn_sigma=False"):
        split_output(torch.zeros(2, 2, 4, 4), 1, False)


# --- losses -------------------------------------------------------------------------------------
def test_normal_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(2)
    m1, m2, lv1, lv2 = (torch.randn(5, 7, generator=g, dtype=torch.float64) for _ in range(4))
    ref = kl_divergence(Normal(m1, (0.5 * lv1).exp()), Normal(m2, (0.5 * lv2).exp()))
    torch.testing.assert_close(normal_kl(m1, lv1, m2, lv2), ref)


def upstream_cdf(z: float) -> float:
    """improved-diffusion's normal CDF, written out by hand: (1 + tanh(sqrt(2/pi)(z + 0.044715 z^3))) / 2."""
    return 0.5 * (1.0 + math.tanh(math.sqrt(2.0 / math.pi) * (z + 0.044715 * z**3)))


def tanh_cdf(z: torch.Tensor) -> torch.Tensor:
    """:func:`upstream_cdf` elementwise on a tensor."""
    return 0.5 * (1 + torch.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z**3)))


def test_discretized_likelihood_equals_improved_diffusions():
    x = [-1.0, -0.5, 0.0, 0.3, 1.0, 1.2]
    mean = [a + d for a, d in zip(x, [0.002, -0.004, 0.0, 0.01, -0.003, -0.01], strict=True)]
    s, h = 0.004, 1 / 255
    upper = [upstream_cdf((a - m + h) / s) for a, m in zip(x, mean, strict=True)]
    lower = [upstream_cdf((a - m - h) / s) for a, m in zip(x, mean, strict=True)]
    ref = [math.log(upper[0]), *[math.log(upper[i] - lower[i]) for i in (1, 2, 3)],
           math.log(1 - lower[4]), math.log(1 - lower[5])]  # x = -1: open bottom bin; 1 and 1.2 (beyond): open top
    got = discretized_gaussian_log_likelihood(torch.tensor(x, dtype=torch.float64), torch.tensor(mean, dtype=torch.float64),
                                              torch.full((6,), math.log(s), dtype=torch.float64))
    torch.testing.assert_close(got, torch.tensor(ref, dtype=torch.float64), rtol=1e-12, atol=1e-12)
    assert got[2].item() == pytest.approx(math.log(2 * upstream_cdf(h / s) - 1), rel=1e-12)  # centred: -0.3963
    assert got[2].item() == pytest.approx(-0.39629, abs=1e-5)
    far = discretized_gaussian_log_likelihood(torch.zeros(1), torch.ones(1), torch.full((1,), -8.0))
    assert far.item() == pytest.approx(math.log(1e-12))  # floored: bounded loss


def test_decoder_cdf_departs_from_the_exact_one_by_at_most_1_8e_4():
    """The documented size of the tanh approximation (losses.approx_standard_normal_cdf)."""
    z = torch.linspace(-8, 8, 160001, dtype=torch.float64)
    err = (approx_standard_normal_cdf(z) - Normal(0.0, 1.0).cdf(z)).abs()
    assert 1.78e-4 < err.max().item() < 1.80e-4 and abs(abs(z[err.argmax()].item()) - 2.59) < 0.01


class FixedOutput(torch.nn.Module):
    """A 'network' that returns a given tensor (requires_grad) and records its inputs."""

    def __init__(self, out):
        super().__init__()
        self.out, self.calls = out, []

    def forward(self, x, t, cond, drop):
        self.calls.append((x, t, cond, drop))
        return self.out


def test_vlb_term_is_the_closed_form_kl_and_decoder_nll():
    diff = GaussianDiffusion()
    g = torch.Generator().manual_seed(3)
    B = 4
    x0 = (torch.rand(B, 1, 4, 4, generator=g, dtype=torch.float64) * 2 - 1)
    x0[0, 0, 0, 0], x0[0, 0, 0, 1] = 1.0, -1.0  # edge bins at t = 0
    noise = torch.randn_like(x0)
    t = torch.tensor([0, 1, 700, 3998])
    eps = noise + 0.3 * torch.randn_like(x0)
    v = torch.rand(x0.shape, generator=g, dtype=torch.float64) * 2 - 1
    model = FixedOutput(torch.cat([eps, v], 1))
    out = diff.training_losses(model, x0, torch.zeros(B, 3), t=t, noise=noise, generator=g)

    abar = reference_abar()
    xt = abar[t].sqrt().view(-1, 1, 1, 1) * x0 + (1 - abar[t]).sqrt().view(-1, 1, 1, 1) * noise
    torch.testing.assert_close(model.calls[0][0], xt, rtol=1e-6, atol=1e-6)
    expected = []
    for b, tb in enumerate(t.tolist()):
        x0_hat = (xt[b] - (1 - abar[tb]).sqrt() * eps[b]) / abar[tb].sqrt()
        q_mean, q_var, beta = bayes_posterior(abar, x0[b], xt[b], tb)
        p_mean, _, _ = bayes_posterior(abar, x0_hat, xt[b], tb)
        beta_tilde = bayes_posterior(abar, x0[b], xt[b], max(tb, 1))[1]  # clipped at t = 0
        frac = (v[b] + 1) / 2
        p_std = (0.5 * (frac * beta.log() + (1 - frac) * beta_tilde.log())).exp()
        if tb > 0:
            nats = kl_divergence(Normal(q_mean, q_var.sqrt()), Normal(p_mean, p_std)).mean()
        else:
            h = 1 / 255
            lo, hi = tanh_cdf((x0[b] - h - p_mean) / p_std), tanh_cdf((x0[b] + h - p_mean) / p_std)
            probs = torch.where(x0[b] > 0.999, 1 - lo, torch.where(x0[b] < -0.999, hi, hi - lo))
            nats = -probs.clamp(min=1e-12).log().mean()
        expected.append(nats / math.log(2))
    torch.testing.assert_close(out["vlb"], torch.stack(expected), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(out["loss"], out["mse"] + 0.001 * T * out["vlb"])
    torch.testing.assert_close(out["mse"], ((eps - noise) ** 2).mean((1, 2, 3)))


@pytest.mark.parametrize("prediction", ["epsilon", "v"])
def test_vlb_trains_only_the_variance_channel(prediction):
    diff = GaussianDiffusion(DiffusionConfig(prediction=prediction))
    g = torch.Generator().manual_seed(4)
    x0 = torch.rand(4, 1, 4, 4, generator=g) * 2 - 1
    t = torch.tensor([0, 10, 500, 3000])
    raw = torch.randn(4, 2, 4, 4, generator=g).requires_grad_(True)
    out = diff.training_losses(FixedOutput(raw), x0, torch.zeros(4, 3), t=t, generator=g)
    out["vlb"].sum().backward()
    assert torch.count_nonzero(raw.grad[:, :1]) == 0  # stop-gradient on the mean
    assert bool((raw.grad[:, 1:].abs().sum((1, 2, 3)) > 0).all())
    raw.grad = None
    out = diff.training_losses(FixedOutput(raw), x0, torch.zeros(4, 3), t=t, generator=g)
    out["mse"].sum().backward()
    assert torch.count_nonzero(raw.grad[:, 1:]) == 0 and torch.count_nonzero(raw.grad[:, :1]) > 0


def test_drop_mask_rate_and_the_model_sees_it():
    diff = GaussianDiffusion(DiffusionConfig(p_uncond=0.1, loss="simple", learn_sigma=False))
    n = 20000
    model = FixedOutput(torch.zeros(n, 1, 1, 1))
    out = diff.training_losses(model, torch.zeros(n, 1, 1, 1), torch.zeros(n, 2),
                               generator=torch.Generator().manual_seed(5))
    dropped = out["dropped"]
    assert dropped.dtype == torch.bool and torch.equal(model.calls[0][3], dropped)
    assert abs(int(dropped.sum()) - 0.1 * n) < 4.5 * math.sqrt(n * 0.1 * 0.9)
    assert "vlb" not in out and torch.equal(out["loss"], out["mse"])
    # t is uniform over all T steps
    t = out["t"]
    assert int(t.min()) >= 0 and int(t.max()) <= T - 1 and abs(float(t.double().mean()) - (T - 1) / 2) < 30
    again = diff.training_losses(model, torch.zeros(n, 1, 1, 1), torch.zeros(n, 2),
                                 generator=torch.Generator().manual_seed(5))
    assert torch.equal(again["dropped"], dropped) and torch.equal(again["t"], t)
    none = GaussianDiffusion(DiffusionConfig(p_uncond=0.0, loss="simple", learn_sigma=False))
    assert not none.training_losses(model, torch.zeros(n, 1, 1, 1), torch.zeros(n, 2))["dropped"].any()


@pytest.mark.parametrize("prediction,weight", [
    ("epsilon", lambda snr: np.minimum(snr, 5) / snr),
    ("v", lambda snr: np.minimum(snr, 5) / (snr + 1)),
    ("x0", lambda snr: np.minimum(snr, 5)),
])
def test_min_snr_weighting(prediction, weight):
    g = torch.Generator().manual_seed(6)
    x0, noise = torch.rand(4, 1, 4, 4, generator=g) * 2 - 1, torch.randn(4, 1, 4, 4, generator=g)
    t = torch.tensor([0, 100, 1500, 3990])
    raw = torch.randn(4, 2, 4, 4, generator=g)
    plain = GaussianDiffusion(DiffusionConfig(prediction=prediction))
    weighted = GaussianDiffusion(DiffusionConfig(prediction=prediction, min_snr_gamma=5.0))
    a = plain.training_losses(FixedOutput(raw), x0, torch.zeros(4, 3), t=t, noise=noise)
    b = weighted.training_losses(FixedOutput(raw), x0, torch.zeros(4, 3), t=t, noise=noise)
    abar = reference_abar()[t].numpy()
    expected = torch.from_numpy(weight(abar / (1 - abar))).float()
    torch.testing.assert_close(b["mse"], a["mse"] * expected, rtol=1e-4, atol=1e-12)
    torch.testing.assert_close(b["vlb"], a["vlb"])
