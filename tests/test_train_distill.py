"""``clipsonic distill`` (train/distill.py): the nested grid, the two-step target, a tiny run end to end."""

from __future__ import annotations

import json
import math
import signal

import pytest
import torch
from support.eval_dataset import make_eval_dataset, pipeline_refs
from support.tiny_pipeline import tiny_pipeline_dir  # noqa: F401

from clipsonic.diffusion import DiffusionConfig, GaussianDiffusion, guided_denoiser, space_timesteps
from clipsonic.diffusion.samplers import ddim_step
from clipsonic.encoders import ClipModelRef
from clipsonic.errors import ClipsonicError
from clipsonic.models import MelUNet
from clipsonic.pipeline import CLIPSonicPipeline
from clipsonic.pipeline.outputs import generate_files
from clipsonic.pipeline.pipeline import DEFAULT_GUIDANCE_RESCALE
from clipsonic.pipeline.queries import parse_query
from clipsonic.train import export_run
from clipsonic.train.checkpoint import find_checkpoint
from clipsonic.train.distill import DistillTrainConfig, ddim_to, distill, student_target, teacher_two_steps
from clipsonic.train.stop import TrainingStopped

TINY = {"train": {"steps": 1, "teacher_steps": 4, "stage_steps": 2, "save_every": 2, "batch_size": 4, "log_every": 2}}


@pytest.mark.parametrize("num_timesteps", [4000, 1000, 999])
def test_the_trailing_grid_ends_at_the_last_step_and_k_steps_are_every_other_of_2k(num_timesteps):
    for k in (1, 2, 3, 4, 8, 16, 25, 64):
        grid, fine = space_timesteps(num_timesteps, k, "trailing"), space_timesteps(num_timesteps, 2 * k, "trailing")
        assert int(grid[-1]) == int(fine[-1]) == num_timesteps - 1
        assert torch.equal(fine[1::2], grid), k
        assert bool((grid[1:] > grid[:-1]).all()) and int(grid[0]) >= 0
    assert space_timesteps(4000, 4, "trailing").tolist() == [999, 1999, 2999, 3999]


def test_one_student_ddim_step_to_the_target_lands_where_the_teachers_two_steps_do():
    torch.manual_seed(0)
    diff = GaussianDiffusion(DiffusionConfig(num_timesteps=1000, prediction="v"))
    net = MelUNet.from_preset("tiny", cond_dim=8).eval()
    for p in net.parameters():  # an untrained UNet outputs 0; random weights make the teacher do something
        p.data.normal_(0, 0.05)
    teacher = guided_denoiser(net, torch.randn(3, 8), guidance_scale=1.5, formula="cfg",
                              prediction="v", schedule=diff.schedule, learn_sigma=True, rescale=1.0)
    grid, fine = space_timesteps(1000, 4, "trailing"), space_timesteps(1000, 8, "trailing")
    abar = diff.schedule.alphas_cumprod
    for i in range(4):  # the student's index i: the teacher steps fine[2i + 1] = grid[i] → fine[2i] → grid[i - 1]
        a, a_mid, a_next = float(abar[grid[i]]), float(abar[fine[2 * i]]), float(abar[grid[i - 1]]) if i else 1.0
        z = torch.randn(3, 1, 64, 32)
        as4d = [torch.full((3, 1, 1, 1), v) for v in (a, a_mid, a_next)]
        steps = torch.full((3,), int(grid[i])), torch.full((3,), int(fine[2 * i]))
        z_next = teacher_two_steps(teacher, z, *steps, *as4d)
        # the same two steps with the samplers' own DDIM at one float alpha_bar per batch
        x0 = teacher(z, int(grid[i]))[0]
        z_mid = ddim_step(a, a_mid, z, x0, eta=0.0, noise=None, clip_denoised=True)
        reference = ddim_step(a_mid, a_next, z_mid, teacher(z_mid, int(fine[2 * i]))[0], eta=0.0, noise=None,
                              clip_denoised=True)
        assert torch.allclose(z_next, reference, atol=1e-5)  # float32 tensors vs Python floats
        target = student_target(z, z_next, as4d[0], as4d[2])
        one_step = ddim_step(a, a_next, z, target, eta=0.0, noise=None, clip_denoised=False)
        assert torch.allclose(one_step, z_next, atol=1e-5), i
        assert torch.allclose(ddim_to(z, target, as4d[0], as4d[2]), z_next, atol=1e-5)
        assert (z_next - z).abs().mean() > 0.01  # the steps moved: the identity is not 0 = 0


def test_the_config_needs_a_power_of_two_and_sets_max_steps():
    with pytest.raises(ValueError, match="teacher_steps .12. must be steps .4. times a power of two"):
        DistillTrainConfig(steps=4, teacher_steps=12)
    config = DistillTrainConfig(steps=1, teacher_steps=16, stage_steps=10)
    assert config.stages == 4 and [config.student_steps(s) for s in (1, 10, 11, 30, 31, 40)] == [8, 8, 4, 2, 1, 1]
    assert config.lr_at(0) == config.lr and config.lr_at(10) == config.lr and math.isclose(config.lr_at(5), config.lr / 2)
    assert DistillTrainConfig().guidance_rescale == DEFAULT_GUIDANCE_RESCALE  # the teacher is guided as the pipeline


@pytest.fixture(scope="module")
def distilled(tiny_pipeline_dir, tmp_path_factory):  # noqa: F811
    """A 2-stage run (4 → 2 → 1 steps, 2 training steps each) of the tiny pipeline on a tiny dataset of its CLIP."""
    root = tmp_path_factory.mktemp("distill")
    mel, clip = pipeline_refs(tiny_pipeline_dir)
    make_eval_dataset(root / "data", mel, clip, test_clips=2, train_clips=8)
    run = distill(tiny_pipeline_dir, root / "data", root / "run", TINY)
    return run, root


def test_distill_exports_a_one_step_pipeline_that_runs_one_conditional_pass_per_step(distilled, tiny_pipeline_dir):  # noqa: F811
    run, root = distilled
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["student_steps"] for m in metrics if m["kind"] == "train"] == [2.0, 1.0]  # one log per stage end
    pipe = CLIPSonicPipeline.from_pretrained(run / "pipeline", device="cpu")
    assert pipe.diffusion.config.distilled_steps == 1 and pipe.modes == CLIPSonicPipeline.from_pretrained(
        tiny_pipeline_dir, device="cpu").modes  # clip, prior, stats carried over
    batches = []
    pipe.unet.register_forward_hook(lambda module, args, out: batches.append(args[0].shape[0]))
    files = generate_files(pipe, parse_query(["a dog", "a violin"]), root / "gen", seed=0, sidecar={"model": "x"},
                           mode="zs")
    assert batches == [2]  # K = 1 forward of batch B = 2: no unconditional half
    side = json.loads(files[0].with_suffix(".json").read_text())
    assert side["distilled"] is True
    assert {k: side["settings"][k] for k in ("num_inference_steps", "sampler", "guidance_scale")} == {
        "num_inference_steps": 1, "sampler": "ddim", "guidance_scale": 1.5}
    # the student of the first stage: a checkpoint at its end exports a 2-step pipeline
    two = CLIPSonicPipeline.from_pretrained(export_run(run, root / "two", step=2), device="cpu")
    batches.clear()
    two.unet.register_forward_hook(lambda module, args, out: batches.append(args[0].shape[0]))
    assert two.sampling()["num_inference_steps"] == 2 and two(text="a dog", mode="zs", seed=0).sampling["distilled"]
    assert batches == [1, 1]


def test_a_distilled_pipeline_refuses_what_it_was_not_distilled_for(distilled):
    pipe = CLIPSonicPipeline.from_pretrained(distilled[0] / "pipeline", device="cpu")
    for bad, named in (({"guidance_scale": 3.0}, "guidance_scale=3.0"), ({"num_inference_steps": 50}, "=50"),
                       ({"sampler": "ddpm"}, "sampler='ddpm'"), ({"negative_text": "noise"}, "negative_text")):
        with pytest.raises(ClipsonicError) as err:
            pipe(text="a dog", mode="zs", **bad)
        assert "\n" not in str(err.value) and named in str(err.value) and "distilled to 1 ddim step" in str(err.value)
        assert "use " + str(pipe.training["distilled"]["from"]) in str(err.value)  # the fix: the undistilled pipeline


def test_distill_refuses_a_dataset_of_another_clip_and_a_distilled_pipeline(distilled, tiny_pipeline_dir, tmp_path):  # noqa: F811
    mel, clip = pipeline_refs(tiny_pipeline_dir)
    other = ClipModelRef(model="other/clip", dim=clip.dim, fingerprint="0123456789abcdef")
    make_eval_dataset(tmp_path / "data", mel, other, test_clips=2, train_clips=4)
    with pytest.raises(ClipsonicError, match="built with CLIP weights .*re-run preprocess with --clip-model"):
        distill(tiny_pipeline_dir, tmp_path / "data", tmp_path / "run", TINY)
    assert not (tmp_path / "run").exists()
    with pytest.raises(ClipsonicError, match="already distilled .1 steps."):
        distill(distilled[0] / "pipeline", distilled[1] / "data", tmp_path / "run2", TINY)


def test_a_run_stopped_after_a_stage_boundary_resumes_exactly(distilled, tiny_pipeline_dir, tmp_path):  # noqa: F811
    def interrupt(step, max_steps, logged):  # Ctrl-C during step 2: the loop stops after step 3, a new stage's
        if step == 2:
            signal.raise_signal(signal.SIGINT)

    data = distilled[1] / "data"
    with pytest.raises(TrainingStopped, match="stopped by SIGINT after step 3 of 4"):
        distill(tiny_pipeline_dir, data, tmp_path / "run", TINY, progress=interrupt)
    distill(tiny_pipeline_dir, data, tmp_path / "run", TINY, resume=True)
    for name in ("student", "teacher"):
        resumed, straight = (find_checkpoint(run, 4).module(name) for run in (tmp_path / "run", distilled[0]))
        assert all(torch.equal(resumed[k], straight[k]) for k in straight), name
