"""The tiny MelUNet + GaussianDiffusion memorise 4 mels and regenerate each from its own embedding.

A check of the whole learning path (network, hybrid loss, guidance, the three samplers) that a
bug in any of them fails: L_simple on a fixed (t, noise) grid must fall more than 10×, and every
sampler, conditioned on clip i's embedding, must land much closer to mel i than samples
conditioned on the other embeddings do.

v-prediction, as the CPU recipe (docs/benchmarks.md, "Objective on a CPU"): with ε-prediction the
same 300 steps also cut L_simple ~19× but the few-step DDIM / DPM-Solver++ chains from x_T are still
poor (the x_0 implied by an ε error at t ≈ T is amplified by 1/sqrt(ᾱ_t) ≈ 10⁴), so the sampler
check would test training length rather than correctness.
"""

import pytest
import torch
from support.synthetic_dataset import synthetic_mel_config, tone_logmel

from clipsonic.audio import normalize
from clipsonic.diffusion import DiffusionConfig, GaussianDiffusion
from clipsonic.models import MelUNet

pytestmark = pytest.mark.slow

STEPS = 300


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    mel = synthetic_mel_config(16)
    classes = (0, 2, 4, 6)  # 220, 495, 1114, 2506 Hz tones with different gates
    x0 = torch.stack([normalize(torch.from_numpy(tone_logmel(c, 0, mel)), mel) for c in classes])[:, None]  # [4, 1, 64, 16]
    cond = torch.nn.functional.normalize(torch.randn(4, 16, generator=torch.Generator().manual_seed(0)), dim=1)
    diffusion = GaussianDiffusion(DiffusionConfig(prediction="v"))
    model = MelUNet.from_preset("tiny", cond_dim=16)
    before = l_simple(diffusion, model, x0, cond)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(1)
    for _ in range(STEPS):
        loss = diffusion.training_losses(model, x0.repeat(2, 1, 1, 1), cond.repeat(2, 1), generator=gen)["loss"].mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    model.eval()
    return diffusion, model, x0, cond, before


@torch.no_grad()
def l_simple(diffusion, model, x0, cond):
    """Mean MSE term over 64 fixed (t, noise) pairs: t at bin midpoints of [0, T), 16 per mel."""
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(123)
    xs, cs = x0.repeat(16, 1, 1, 1), cond.repeat(16, 1)
    t = ((torch.arange(64) + 0.5) * diffusion.num_timesteps / 64).long()
    terms = diffusion.training_losses(model, xs, cs, t=t, noise=torch.randn(xs.shape, generator=gen), generator=gen)
    model.train(was_training)
    return float(terms["mse"].mean())


def test_l_simple_falls_tenfold(trained):
    diffusion, model, x0, cond, before = trained
    after = l_simple(diffusion, model, x0, cond)
    assert before / after > 10, (before, after)


@pytest.mark.parametrize("sampler,steps", [("ddpm", 50), ("ddim", 20), ("dpmpp-2m", 20)])
def test_samples_follow_their_own_embedding(trained, sampler, steps):
    diffusion, model, x0, cond, _ = trained
    out = diffusion.sample(model, (4, 1, 64, 16), cond, sampler=sampler, steps=steps, guidance_scale=1.5,
                           generator=torch.Generator().manual_seed(5))
    dist = ((out[:, None] - x0[None]) ** 2).mean(dim=(2, 3, 4))  # [sample j (cond j), target i]
    for i in range(4):
        own, others = dist[i, i], torch.cat([dist[:i, i], dist[i + 1:, i]])
        assert own < 0.05 and own < 0.5 * others.min(), (sampler, i, dist)
