"""clipsonic.diffusion.guidance: classifier-free guidance's formulas, the batched two-branch denoiser, and that guiding
ε, v or x0 is one mix."""

import math

import pytest
import torch
from support.diffusion_reference import reference_abar

from clipsonic.diffusion import DiffusionConfig, GaussianDiffusion, guide, guided_denoiser


class TwoBranch(torch.nn.Module):
    """Returns fixed conditional / unconditional outputs by drop_cond; records calls."""

    def __init__(self, cond_out, uncond_out):
        super().__init__()
        self.cond_out, self.uncond_out, self.calls = cond_out, uncond_out, []

    def forward(self, x, t, cond, drop):
        self.calls.append((x, t, cond, drop))
        n = x.shape[0] // self.cond_out.shape[0]
        c, u = self.cond_out.repeat(n, 1, 1, 1), self.uncond_out.repeat(n, 1, 1, 1)
        return torch.where(drop.view(-1, 1, 1, 1), u, c)


def _two_branch(seed=7, channels=2):
    g = torch.Generator().manual_seed(seed)
    return TwoBranch(torch.randn(3, channels, 4, 4, generator=g), torch.randn(3, channels, 4, 4, generator=g))


def test_guide_formulas():
    c, u = torch.tensor([2.0]), torch.tensor([0.5])
    assert guide(c, u, 1.5, "cfg").item() == pytest.approx(0.5 + 1.5 * 1.5)
    assert guide(c, u, 1.5, "cfg-plus-one").item() == pytest.approx(2.0 + 1.5 * 1.5)
    assert guide(c, u, 0.0, "cfg").item() == 0.5 and guide(c, u, 1.0, "cfg").item() == 2.0
    assert guide(c, u, 0.0, "cfg-plus-one").item() == 2.0
    with pytest.raises(ValueError, match="formula"):
        guide(c, u, 1.0, "magic")


def _x0_from_eps(x, t, eps):
    abar = float(reference_abar()[t])
    return (x - math.sqrt(1 - abar) * eps) / math.sqrt(abar)


def test_guided_denoiser_batches_both_branches_once():
    model = _two_branch()
    cond = torch.randn(3, 5)
    x = torch.randn(3, 1, 4, 4)
    denoise = guided_denoiser(model, cond, guidance_scale=1.5, formula="cfg", prediction="epsilon",
                              schedule=GaussianDiffusion().schedule, learn_sigma=True)
    x0, var = denoise(x, 1234)
    assert len(model.calls) == 1
    x_in, t_in, c_in, drop = model.calls[0]
    assert x_in.shape[0] == 6 and torch.equal(x_in, torch.cat([x, x])) and torch.equal(c_in, torch.cat([cond, cond]))
    assert drop.tolist() == [False] * 3 + [True] * 3 and t_in.tolist() == [1234] * 6 and t_in.dtype == torch.long
    eps_c, eps_u = model.cond_out[:, :1], model.uncond_out[:, :1]
    torch.testing.assert_close(x0, _x0_from_eps(x, 1234, eps_u + 1.5 * (eps_c - eps_u)))
    assert torch.equal(var, model.cond_out[:, 1:])  # the conditional branch's variance


@pytest.mark.parametrize("scale,formula,branch", [(1.0, "cfg", "cond"), (0.0, "cfg", "uncond"),
                                                  (0.0, "cfg-plus-one", "cond")])
def test_guidance_that_is_one_branch_runs_only_that_branch(scale, formula, branch):
    model = _two_branch()
    denoise = guided_denoiser(model, torch.randn(3, 5), guidance_scale=scale, formula=formula, prediction="x0",
                              schedule=GaussianDiffusion().schedule, learn_sigma=True)
    x0, var = denoise(torch.randn(3, 1, 4, 4), 10)
    assert len(model.calls) == 1 and model.calls[0][0].shape[0] == 3
    ref = model.cond_out if branch == "cond" else model.uncond_out
    assert model.calls[0][3].tolist() == [branch == "uncond"] * 3
    assert torch.equal(x0, ref[:, :1]) and torch.equal(var, ref[:, 1:])


def test_guiding_eps_v_or_x0_is_the_same_mix():
    """Each parametrisation is affine in eps at a given x_t, and the mix's weights sum to 1: mixing the raw
    predictions, then converting, gives the x_0 of the eps mix."""
    schedule = GaussianDiffusion().schedule
    x, t = torch.randn(3, 1, 4, 4), 2500
    a, s = math.sqrt(float(reference_abar()[t])), math.sqrt(1 - float(reference_abar()[t]))
    to_eps = {"epsilon": lambda p: p, "v": lambda p: a * p + s * x, "x0": lambda p: (x - a * p) / s}
    for prediction, convert in to_eps.items():
        model = _two_branch(channels=1)
        denoise = guided_denoiser(model, torch.randn(3, 5), guidance_scale=2.0, formula="cfg", prediction=prediction,
                                  schedule=schedule, learn_sigma=False)
        x0, var = denoise(x, t)
        eps_c, eps_u = convert(model.cond_out), convert(model.uncond_out)
        assert var is None
        torch.testing.assert_close(x0, _x0_from_eps(x, t, eps_u + 2.0 * (eps_c - eps_u)), rtol=1e-4, atol=1e-4)


def test_v_prediction_x0_does_not_pass_through_eps():
    """At alpha_bar = 2.4e-9 (the noisiest of 1000 cosine steps) x_0 = (x - sqrt(1 - abar) eps)/sqrt(abar)
    turns float32 rounding of eps into errors of ~1e-3; the direct v formula keeps x_0 exact to float32."""
    diff = GaussianDiffusion(DiffusionConfig(num_timesteps=1000, prediction="v", learn_sigma=False, loss="simple"))
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    v = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    denoise = guided_denoiser(lambda x_in, t, c, drop: v, torch.zeros(2, 3), guidance_scale=1.0, formula="cfg",
                              prediction="v", schedule=diff.schedule, learn_sigma=False)
    abar = diff.schedule.alphas_cumprod[999].item()
    x0, _ = denoise(x, 999)
    exact = math.sqrt(abar) * x.double() - math.sqrt(1 - abar) * v.double()
    assert abar < 1e-8 and (x0.double() - exact).abs().max() < 1e-6
