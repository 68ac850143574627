"""clipsonic.diffusion samplers: single steps and trajectories against diffusers' schedulers, and
closed-form end-to-end checks with exact denoisers (point-mass and Gaussian data)."""

import math

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler
from support.diffusion_reference import T, reference_abar, reference_betas

from clipsonic.diffusion import SAMPLERS, DiffusionConfig, GaussianDiffusion, respace, space_timesteps
from clipsonic.diffusion.samplers import SPACING, ddim_step, ddpm_step

COSINE = dict(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2")


def in_float64(scheduler):
    """diffusers keeps its schedule in float32, where 1 - alpha_bar_t cancels at small t
    (alpha_bar_0 = 1 - 1e-5: 0.6% error), so give it float64 constants before comparing."""
    scheduler.betas = reference_betas()
    scheduler.alphas = 1 - scheduler.betas
    scheduler.alphas_cumprod = torch.cumprod(scheduler.alphas, 0)
    return scheduler


def _fake_output(seed, shape=(2, 1, 8, 8)):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    eps = torch.randn(shape, generator=g, dtype=torch.float64)
    v = torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1
    return x, eps, v


# --- single steps vs diffusers ------------------------------------------------------------------
@pytest.mark.parametrize("steps", [None, 1000])
def test_ddpm_learned_range_step_matches_diffusers(steps):
    ref = in_float64(DDPMScheduler(**COSINE, variance_type="learned_range", timestep_spacing="linspace"))
    diff = GaussianDiffusion()
    if steps is None:
        schedule, checks = diff.schedule, [3999, 2000, 1, 0]
    else:
        ref.set_timesteps(steps)
        schedule = diff.respaced(steps)
        checks = [int(ref.timesteps[k]) for k in (0, 1, 500, 998, 999)]
    for t in checks:
        x, eps, v = _fake_output(t)
        x = 2.5 * x  # some x0 predictions leave [-1, 1]: the clamp is exercised
        expected = ref.step(torch.cat([eps, v], 1), t, x, generator=torch.Generator().manual_seed(9)).prev_sample
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
        i = int((schedule.timesteps == t).nonzero())
        abar = schedule.alphas_cumprod[i].item()
        x0 = (x - math.sqrt(1 - abar) * eps) / math.sqrt(abar)
        got = ddpm_step(schedule, i, x, x0, v, noise, clip_denoised=True)
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9, msg=f"t={t}")


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_step_matches_diffusers(eta):
    ref = in_float64(DDIMScheduler(**COSINE, timestep_spacing="leading", set_alpha_to_one=True))
    ref.set_timesteps(1000)  # stride 4: previous step of t is t - 4, of 0 is alpha_bar = 1
    abar = reference_abar().tolist()
    for t in (3996, 2000, 4, 0):
        x, eps, _ = _fake_output(t)
        x = 2.5 * x
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(t), dtype=torch.float64)
        expected = ref.step(eps, t, x, eta=eta, use_clipped_model_output=True,
                            variance_noise=noise if eta > 0 else None).prev_sample
        x0 = (x - math.sqrt(1 - abar[t]) * eps) / math.sqrt(abar[t])
        got = ddim_step(abar[t], abar[t - 4] if t >= 4 else 1.0, x, x0, eta=eta, noise=noise, clip_denoised=True)
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9, msg=f"t={t}")


ABAR = reference_abar()


def _fake_x0(x, t):
    """A deterministic, smooth, nonlinear stand-in for a network's x_0 estimate (it leaves [-1, 1])."""
    return 1.2 * torch.tanh(1.3 * x) * (1 - 0.5 * t / T) + 0.1 * torch.sin(3 * x)


def _fake_eps(x, t):
    """The same stand-in as eps, for diffusers' schedulers."""
    return (x - math.sqrt(ABAR[t]) * _fake_x0(x, t)) / math.sqrt(1 - ABAR[t])


SOLVERS = {  # our sampler -> the diffusers scheduler it equals (each one's default grid, then sigma = 0)
    "dpmpp-2m": lambda clip: DPMSolverMultistepScheduler(**COSINE, algorithm_type="dpmsolver++", solver_order=2,
                                                         variance_type=None, thresholding=clip, sample_max_value=1.0),
    "dpmpp-3m": lambda clip: DPMSolverMultistepScheduler(**COSINE, algorithm_type="dpmsolver++", solver_order=3,
                                                         variance_type=None, thresholding=clip, sample_max_value=1.0),
    "unipc": lambda clip: UniPCMultistepScheduler(**COSINE, solver_order=2, solver_type="bh2", thresholding=clip,
                                                  sample_max_value=1.0),
}


@pytest.mark.parametrize("sampler", sorted(SOLVERS))
@pytest.mark.parametrize("steps,clip", [(20, False), (20, True), (7, False), (5, True)])
def test_multistep_solver_trajectory_matches_diffusers(sampler, steps, clip):
    ref = in_float64(SOLVERS[sampler](clip))
    ref.set_timesteps(steps)
    grid = space_timesteps(T, steps, SPACING[sampler])
    assert torch.equal(grid, ref.timesteps.flip(0))
    # its sigmas are float32; at alpha_bar = 1.5e-10 (t = 3999) x0 = (x - sigma eps)/alpha then
    # cancels to ~1e-2, so give it float64 ones (its update itself runs in float32)
    abar = ABAR[grid.flip(0)]
    ref.sigmas = torch.cat([((1 - abar) / abar).sqrt(), torch.zeros(1, dtype=torch.float64)])
    x_T = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    ref_path, x = [], x_T.clone()
    for t in ref.timesteps:
        ref_path.append(x)
        x = ref.step(_fake_eps(x, int(t)), t, x).prev_sample
    path = []

    def denoise(x, t):
        path.append(x)
        return _fake_x0(x, t), None

    schedule = respace(GaussianDiffusion().schedule, grid)
    out = SAMPLERS[sampler](denoise, x_T, schedule, clip_denoised=clip)
    assert len(path) == len(ref_path) == steps
    for k, (a, b) in enumerate(zip(path, ref_path, strict=True)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=f"step {k}")  # diffusers steps in float32
    torch.testing.assert_close(out, x, rtol=1e-5, atol=1e-5)
    # and the second-order correction matters at this tolerance: first order (DDIM) differs
    first_order = SAMPLERS["ddim"](lambda x, t: (_fake_x0(x, t), None), x_T, schedule, clip_denoised=clip)
    assert (first_order - out).abs().max() > 1e-3


# --- exact denoisers ----------------------------------------------------------------------------
class PointMass(torch.nn.Module):
    """The exact network for data x_0 = c (c_uncond where drop_cond): eps = (x - sqrt(abar) c)/sqrt(1 - abar),
    expressed in the configured parametrisation, with a random variance channel. Records calls."""

    def __init__(self, c, c_uncond=None, prediction="epsilon", learn_sigma=True):
        super().__init__()
        self.c, self.c_uncond = c, c if c_uncond is None else c_uncond
        self.prediction, self.learn_sigma, self.calls = prediction, learn_sigma, []
        self.abar = reference_abar()

    def forward(self, x, t, cond, drop):
        self.calls.append((t.clone(), drop.clone()))
        a = self.abar[t].view(-1, 1, 1, 1)
        c = torch.where(drop.view(-1, 1, 1, 1), self.c_uncond, self.c).double()
        eps = (x.double() - a.sqrt() * c) / (1 - a).sqrt()
        pred = {"epsilon": eps, "x0": c.expand_as(eps), "v": a.sqrt() * eps - (1 - a).sqrt() * c}[self.prediction]
        pred = pred.float()
        if not self.learn_sigma:
            return pred
        g = torch.Generator().manual_seed(int(t[0]))
        return torch.cat([pred, torch.rand(x.shape, generator=g) * 2 - 1], 1)


SHAPE = (2, 1, 8, 8)
C = torch.linspace(-0.9, 0.9, 64).view(1, 1, 8, 8)


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
@pytest.mark.parametrize("prediction", ["epsilon", "v", "x0"])
def test_every_sampler_recovers_a_point_mass(sampler, prediction):
    diff = GaussianDiffusion(DiffusionConfig(prediction=prediction))
    model = PointMass(C, prediction=prediction)
    out = diff.sample(model, SHAPE, torch.zeros(2, 4), sampler=sampler, steps=25, guidance_scale=1.0,
                      generator=torch.Generator().manual_seed(0), eta=1.0)
    torch.testing.assert_close(out, C.expand(SHAPE), rtol=0, atol=1e-4)
    ts = [int(t[0]) for t, _ in model.calls]
    assert ts == space_timesteps(T, 25, SPACING[sampler]).flip(0).tolist()  # the original steps


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
@pytest.mark.parametrize("formula,scale", [("cfg", 1.5), ("cfg", 0.0), ("cfg", 1.0), ("cfg-plus-one", 0.5)])
def test_guided_point_masses_land_on_the_guided_point(sampler, formula, scale):
    """eps is affine in c, so guiding two point-mass denoisers is the point-mass denoiser of
    c_u + w (c_c - c_u) ("cfg") or c_c + w (c_c - c_u) ("cfg-plus-one")."""
    c_cond, c_uncond = 0.4 * C, -0.3 * C.flip(-1)
    target = (c_uncond + scale * (c_cond - c_uncond)) if formula == "cfg" else c_cond + scale * (c_cond - c_uncond)
    diff = GaussianDiffusion(DiffusionConfig(guidance_formula=formula))
    model = PointMass(c_cond, c_uncond)
    out = diff.sample(model, SHAPE, torch.zeros(2, 4), sampler=sampler, steps=20, guidance_scale=scale,
                      generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(out, target.expand(SHAPE), rtol=0, atol=1e-4)
    # guidance costs one forward per step: of 2B ([x; x] with [cond; null]), or of B when the mix is one branch
    drop = {("cfg", 0.0): [True] * 2, ("cfg", 1.0): [False] * 2}.get((formula, scale), [False] * 2 + [True] * 2)
    assert [d.tolist() for _, d in model.calls] == [drop] * 20


def test_learn_sigma_false_samples_with_the_fixed_variance():
    diff = GaussianDiffusion(DiffusionConfig(learn_sigma=False, loss="simple"))
    model = PointMass(C, learn_sigma=False)
    for sampler in SAMPLERS:
        out = diff.sample(model, SHAPE, torch.zeros(2, 4), sampler=sampler, steps=10, guidance_scale=2.0)
        torch.testing.assert_close(out, C.expand(SHAPE), rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="learn_sigma=True"):
        GaussianDiffusion().sample(model, SHAPE, torch.zeros(2, 4), steps=2)


class GaussianData(torch.nn.Module):
    """The exact eps for data x_0 ~ N(mu, s^2) per element: E[x_0 | x_t] = mu + a s^2 (x_t - a mu)/(a^2 s^2 + b^2)."""

    def __init__(self, mu, s, v=-1.0):
        super().__init__()
        self.mu, self.s, self.v, self.abar = mu, s, v, reference_abar()

    def forward(self, x, t, cond, drop):
        abar = self.abar[t].view(-1, 1, 1, 1)
        a, b = abar.sqrt(), (1 - abar).sqrt()
        x0 = self.mu + a * self.s**2 * (x.double() - a * self.mu) / (abar * self.s**2 + b**2)
        eps = ((x.double() - a * x0) / b).to(x.dtype)
        return torch.cat([eps, torch.full_like(eps, self.v)], 1)


@pytest.mark.parametrize("sampler,steps,tol", [("ddim", 100, 0.03), ("ddim", 400, 0.008),
                                               ("dpmpp-2m", 20, 0.04), ("dpmpp-2m", 50, 0.002)])
def test_ode_samplers_map_noise_to_the_gaussian_data_distribution(sampler, steps, tol):
    """With exact eps the deterministic samplers are affine maps x_0 = A x_T + B per element; the
    probability-flow ODE they discretise has A = s, B = mu. Measured errors in A: DDIM (first
    order) 2.3% at 100 steps, 0.6% at 400; DPM-Solver++(2M) 2.9% at 20, 0.07% at 50."""
    mu, s = 0.2, 0.3
    diff = GaussianDiffusion()
    # float64: at t = 3999 (alpha_bar = 1.5e-10) x0 = (x - sigma eps)/alpha loses ~1e-3 in float32
    x_T = torch.tensor([0.0, 1.0, -2.0], dtype=torch.float64).view(3, 1, 1, 1).expand(3, 1, 4, 4).contiguous()
    out = diff.sample(GaussianData(mu, s), tuple(x_T.shape), torch.zeros(3, 2), sampler=sampler, steps=steps,
                      guidance_scale=1.0, clip_denoised=False, x_T=x_T)
    offset, slope = out[0].mean(), out[1].mean() - out[0].mean()
    assert float(offset) == pytest.approx(mu, abs=tol * s)
    assert float(slope) == pytest.approx(s, rel=tol)
    torch.testing.assert_close(out[2], offset - 2 * slope + 0 * out[2], rtol=0, atol=1e-9)  # affine


@pytest.mark.parametrize("sampler,eta", [("ddpm", 0.0), ("ddim", 1.0)])
def test_stochastic_samplers_match_gaussian_data_statistics(sampler, eta):
    mu, s = 0.2, 0.3
    diff = GaussianDiffusion()
    out = diff.sample(GaussianData(mu, s), (16, 1, 16, 16), torch.zeros(16, 2), sampler=sampler, steps=100,
                      guidance_scale=1.0, clip_denoised=False, eta=eta, generator=torch.Generator().manual_seed(2))
    n = out.numel()  # 4096 independent values: 4.5 standard errors
    assert float(out.mean()) == pytest.approx(mu, abs=4.5 * s / math.sqrt(n))
    assert float(out.std()) == pytest.approx(s, rel=4.5 / math.sqrt(2 * n) + 0.01)


# --- the sample() API ---------------------------------------------------------------------------
def test_sampling_is_reproducible_with_a_generator_and_reports_progress():
    diff = GaussianDiffusion()
    model = GaussianData(0.0, 0.5, v=0.3)
    seen = []
    run = lambda seed, **kw: diff.sample(model, SHAPE, torch.zeros(2, 3), steps=8,  # noqa: E731
                                         generator=torch.Generator().manual_seed(seed), **kw)
    a = run(3, progress=lambda i, n: seen.append((i, n)))
    assert torch.equal(a, run(3)) and not torch.equal(a, run(4))
    assert seen == [(i, 8) for i in range(1, 9)]
    x_T = torch.randn(SHAPE)
    b = diff.sample(model, SHAPE, torch.zeros(2, 3), sampler="ddim", steps=5, x_T=x_T)
    assert torch.equal(b, diff.sample(model, SHAPE, torch.zeros(2, 3), sampler="ddim", steps=5, x_T=x_T))


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_sdedit_runs_the_chain_s_last_steps_and_inpainting_keeps_the_known_region_exactly(sampler):
    diff, grid = GaussianDiffusion(), space_timesteps(T, 10, SPACING[sampler])
    x_init, known = torch.rand(SHAPE) * 3 - 1.5, torch.rand(SHAPE) * 2 - 1
    for strength, calls in ((0.0, 0), (0.34, 3), (1.0, 10)):
        model = PointMass(C)
        out = diff.sample(model, SHAPE, torch.zeros(2, 4), sampler=sampler, steps=10, guidance_scale=1.0,
                          x_init=x_init, strength=strength, generator=torch.Generator().manual_seed(0), eta=1.0)
        assert [int(t[0]) for t, _ in model.calls] == grid[:calls].flip(0).tolist()
        if calls == 0:
            assert torch.equal(out, x_init.clamp(-1, 1))  # SDEdit at strength 0: the input itself
    keep = (torch.arange(8) % 3 == 0).view(1, 1, 1, 8)  # every third frame
    out = diff.sample(PointMass(C), SHAPE, torch.zeros(2, 4), sampler=sampler, steps=10, guidance_scale=1.0,
                      known=known, known_mask=keep, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out[..., keep[0, 0, 0]], known[..., keep[0, 0, 0]])
    torch.testing.assert_close(out[..., ~keep[0, 0, 0]], C.expand(SHAPE)[..., ~keep[0, 0, 0]], rtol=0, atol=1e-4)


def test_sample_rejects_bad_arguments():
    diff = GaussianDiffusion()
    model = GaussianData(0.0, 0.5)
    with pytest.raises(ValueError, match="sampler"):
        diff.sample(model, SHAPE, torch.zeros(2, 3), sampler="euler")
    with pytest.raises(ValueError, match="same B"):
        diff.sample(model, SHAPE, torch.zeros(3, 3))
    with pytest.raises(ValueError, match="steps"):
        diff.sample(model, SHAPE, torch.zeros(2, 3), steps=T + 1)
    with pytest.raises(ValueError, match="x_T"):
        diff.sample(model, SHAPE, torch.zeros(2, 3), x_T=torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="strength"):
        diff.sample(model, SHAPE, torch.zeros(2, 3), x_init=torch.zeros(SHAPE), strength=1.5)
    with pytest.raises(ValueError, match="known_mask"):
        diff.sample(model, SHAPE, torch.zeros(2, 3), known=torch.zeros(SHAPE))


class TinyNet(torch.nn.Module):
    """A small conv net under the model contract, with a learned null condition."""

    def __init__(self, dim=4, width=8):
        super().__init__()
        self.null = torch.nn.Parameter(torch.randn(dim))
        self.cond = torch.nn.Linear(dim + 1, width)
        self.inp = torch.nn.Conv2d(1, width, 3, padding=1)
        self.out = torch.nn.Conv2d(width, 2, 3, padding=1)

    def forward(self, x, t, cond, drop):
        cond = torch.where(drop[:, None], self.null.expand_as(cond), cond)
        emb = self.cond(torch.cat([cond, (t.float() / T)[:, None]], 1))
        return self.out(torch.relu(self.inp(x) + emb[:, :, None, None]))


def test_tiny_network_trains_and_samples():
    torch.manual_seed(0)
    net = TinyNet()
    diff = GaussianDiffusion(DiffusionConfig(p_uncond=0.5))
    g = torch.Generator().manual_seed(0)
    x0, cond = torch.rand(8, 1, 8, 8, generator=g) * 2 - 1, torch.randn(8, 4, generator=g)
    losses = diff.training_losses(net, x0, cond, generator=g)
    losses["loss"].mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    assert net.null.grad.abs().sum() > 0  # the null condition trains where dropped
    with torch.no_grad():
        for sampler in SAMPLERS:
            out = diff.sample(net, (2, 1, 8, 8), cond[:2], sampler=sampler, steps=5, generator=g)
            assert out.shape == (2, 1, 8, 8) and torch.isfinite(out).all() and out.abs().max() <= 1.0 + 1e-6


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_follows_the_input_device_and_a_cpu_generator_reproduces_cpu_results():
    torch.manual_seed(0)
    net = TinyNet().eval()
    diff = GaussianDiffusion()
    x0, cond = torch.rand(4, 1, 8, 8) * 2 - 1, torch.randn(4, 4)
    results = {}
    for device in ("cpu", "cuda"):
        net.to(device)
        losses = diff.training_losses(net, x0.to(device), cond.to(device), generator=torch.Generator().manual_seed(1))
        samples = {s: diff.sample(net, (4, 1, 8, 8), cond.to(device), sampler=s, steps=6,
                                  generator=torch.Generator().manual_seed(2)) for s in SAMPLERS}
        assert all(v.device.type == device for v in [*losses.values(), *samples.values()])
        results[device] = {k: v.cpu() for k, v in (losses | samples).items()}
    for key, value in results["cpu"].items():
        torch.testing.assert_close(results["cuda"][key], value, rtol=1e-4, atol=1e-4, msg=key)
