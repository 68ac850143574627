"""CLIPSonicPipeline on a tiny random pipeline: modes, query kinds, lengths, seeds, guidance, save/load."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
import torch
from PIL import Image
from support.media_files import write_audio, write_frameless_video, write_video
from support.tiny_pipeline import COLOURS, TINY_FRAMES, solid_image, tiny_pipeline_dir  # noqa: F401

from clipsonic.errors import ClipsonicError
from clipsonic.pipeline import CLIPSonicPipeline
from clipsonic.pipeline.queries import MAX_SECONDS

HOP = 512
FAST = dict(num_inference_steps=3, prior_steps=4)


@pytest.fixture(scope="module")
def pipe(tiny_pipeline_dir):  # noqa: F811
    return CLIPSonicPipeline.from_pretrained(tiny_pipeline_dir, device="cpu")


def test_loads_every_component_and_defaults(pipe):
    assert pipe.modes == ("iq", "zs", "pd", "shift", "knn")
    assert pipe.default_mode("text") == "pd" and pipe.default_mode("image") == "iq" and pipe.default_mode("video") == "iq"
    assert pipe.vocoder_is_fallback and pipe.sample_rate == 16000
    assert pipe.clip.dim == 32 and pipe.stats.image_bank.shape == (8, 32)


@pytest.mark.parametrize("mode", ["zs", "pd", "shift", "knn"])
def test_every_text_mode_gives_a_training_clip_of_audio(pipe, mode):
    out = pipe(text=["a dog barking", "rain"], mode=mode, seed=0, **FAST)
    assert out.mode == mode and out.sample_rate == 16000
    assert out.audios.shape == (2, TINY_FRAMES * HOP) and out.audios.dtype == np.float32
    assert out.mels.shape == (2, 64, TINY_FRAMES) and out.condition.shape == (2, 32)
    assert np.allclose(np.linalg.norm(out.condition, axis=1), 1.0, atol=1e-5)
    assert np.isfinite(out.audios).all() and out.queries == ["a dog barking", "rain"] and out.seeds == [0, 1]
    assert not np.allclose(out.mels[0], out.mels[1])


def test_knn_and_shift_conditions_follow_their_formulas(pipe):
    from clipsonic import bridges

    emb = pipe.encoder.encode_texts(["a dog barking"])
    bank = pipe.stats.image_bank.float()
    knn = pipe(text="a dog barking", mode="knn", knn_k=3, seed=0, **FAST).condition
    assert np.allclose(knn, bridges.nearest_images(emb, bank, 3).numpy(), atol=1e-5)
    shift = pipe(text="a dog barking", mode="shift", seed=0, **FAST).condition
    mean_text = pipe.encoder.encode_texts(bridges.shift_prompts(list(COLOURS))).mean(0)
    expected = bridges.modality_shift(emb, pipe.stats.mean_image_embedding, mean_text)
    assert np.allclose(shift, expected.numpy(), atol=1e-5)


def test_image_queries_any_form(pipe, tmp_path):
    red = solid_image(COLOURS["red"], 48)
    Image.fromarray(red).save(tmp_path / "red.png")
    Image.fromarray(red).convert("P").save(tmp_path / "red.gif")
    by_path = pipe(image=tmp_path / "red.png", seed=3, **FAST)
    assert by_path.mode == "iq" and by_path.audios.shape == (1, TINY_FRAMES * HOP) and by_path.queries == ["red.png"]
    by_array = pipe(image=red, seed=3, **FAST)
    by_pil = pipe(image=Image.fromarray(red), seed=3, **FAST)
    assert np.array_equal(by_path.audios, by_array.audios) and np.array_equal(by_array.audios, by_pil.audios)
    assert pipe(image=str(tmp_path / "red.gif"), seed=3, **FAST).audios.shape == (1, TINY_FRAMES * HOP)
    emb = pipe.encoder.encode_images([red])
    by_emb = pipe(image_embeds=emb * 3.0, seed=3, **FAST)  # renormalised
    assert np.allclose(by_emb.condition, by_array.condition, atol=1e-6)
    assert np.abs(by_emb.mels - by_array.mels).mean() < 1e-4


def test_video_query_follows_the_video_length_and_pools_frames(pipe, tmp_path):
    from clipsonic.media import load_frames

    video = write_video(tmp_path / "v.mp4", seconds=1.5, fps=10, size=(32, 32), audio_codec=None)  # red, then green
    out = pipe(video=video, seed=0, **FAST)
    frames = 48  # 1.5 s = 46.9 frames, rounded up to a multiple of 8; the audio trimmed back to the video's 1.5 s
    assert out.mode == "iq" and out.mels.shape[-1] == frames and out.durations == [pytest.approx(1.5, abs=0.01)]
    assert out.audios.shape == (1, round(out.durations[0] * 16000))
    times = [(i + 0.5) * 1.5 / 8 for i in range(8)]
    mean = torch.nn.functional.normalize(pipe.encoder.encode_images(load_frames(video, times)).mean(0), dim=-1)
    assert np.allclose(out.condition[0], mean.numpy(), atol=1e-5)
    for pooling, t in (("first", 0.0), ("middle", 0.75)):
        one = pipe(video=video, video_frames=pooling, seed=0, **FAST)
        assert np.allclose(one.condition, pipe.encoder.encode_images(load_frames(video, [t])).numpy(), atol=1e-5)
    assert not np.allclose(one.condition, out.condition, atol=1e-3)  # green frames are in the mean
    cut = pipe(video=video, seconds=0.5, seed=0, **FAST)
    assert cut.audios.shape == (1, 16 * HOP)


def test_seconds_round_to_multiples_of_eight_frames_and_may_exceed_training(pipe):
    assert pipe(text="a dog", mode="zs", seconds=1.3, seed=0, **FAST).audios.shape == (1, 40 * HOP)
    assert pipe(text="a dog", mode="zs", seconds=0.01, seed=0, **FAST).audios.shape == (1, 8 * HOP)
    long = pipe(text="a dog", mode="zs", seconds=2.5, seed=0, **FAST)
    assert long.audios.shape == (1, 80 * HOP) and np.isfinite(long.audios).all()


def test_same_seed_same_audio_other_seed_other_audio(pipe):
    a = pipe(text="a dog barking", seed=7, **FAST)
    b = pipe(text="a dog barking", seed=7, **FAST)
    c = pipe(text="a dog barking", seed=8, **FAST)
    assert np.array_equal(a.audios, b.audios)
    assert not np.allclose(a.mels, c.mels)
    gen = pipe(text="a dog barking", generator=torch.Generator().manual_seed(7), **FAST)
    assert np.array_equal(gen.audios, a.audios) and gen.seeds is None


@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "dpmpp-2m"])
def test_batched_queries_equal_one_by_one_with_the_same_seeds(pipe, sampler):
    prompts = ["a dog barking", "rain on a roof", "a violin"]
    batch = pipe(text=prompts, seed=10, num_samples=2, sampler=sampler, **FAST)
    assert batch.queries == [p for p in prompts for _ in range(2)] and batch.seeds == list(range(10, 16))
    for i, prompt in enumerate(prompts):
        alone = pipe(text=prompt, seed=[10 + 2 * i, 11 + 2 * i], num_samples=2, sampler=sampler, **FAST)
        # equal up to float round-off (batched convolutions sum in another order), which a random
        # network amplifies in a few bins; independent draws differ by ~5 on this ±11 log-mel scale
        diff = np.abs(alone.mels - batch.mels[2 * i:2 * i + 2])
        assert diff.max() < 2e-2 and diff.mean() < 1e-4
        assert np.allclose(alone.condition, batch.condition[2 * i:2 * i + 2], atol=1e-5)
    assert not np.allclose(batch.condition[0], batch.condition[1])  # pd: one prior draw per sample


def test_guidance_zero_ignores_the_query(pipe):
    a = pipe(text="a dog barking", mode="zs", guidance_scale=0.0, seed=1, **FAST)
    b = pipe(text="thunder and rain", mode="zs", guidance_scale=0.0, seed=1, **FAST)
    assert np.allclose(a.mels, b.mels, atol=1e-6)
    c = pipe(text="a dog barking", mode="zs", guidance_scale=1.5, seed=1, **FAST)
    d = pipe(text="thunder and rain", mode="zs", guidance_scale=1.5, seed=1, **FAST)
    assert not np.allclose(c.mels, d.mels, atol=1e-3)


def test_negative_text_replaces_the_null_condition(pipe):
    plain = pipe(text="a dog barking", mode="zs", guidance_scale=3.0, seed=2, **FAST)
    steered = pipe(text="a dog barking", mode="zs", guidance_scale=3.0, negative_text="rain", seed=2, **FAST)
    assert not np.allclose(plain.mels, steered.mels, atol=1e-3)
    # negative = the query itself: eps_u = eps_c, so any w gives the purely conditional model (w = 1)
    same = pipe(text="a dog barking", mode="zs", guidance_scale=3.0, negative_text="a dog barking", seed=2, **FAST)
    conditional = pipe(text="a dog barking", mode="zs", guidance_scale=1.0, seed=2, **FAST)
    assert np.allclose(same.mels, conditional.mels, atol=1e-4)
    # at w = 1 the unconditional branch is never run, so the negative cannot matter
    at_one = pipe(text="a dog barking", mode="zs", guidance_scale=1.0, negative_text="rain", seed=2, **FAST)
    assert np.array_equal(at_one.mels, conditional.mels)
    assert pipe(image=solid_image(COLOURS["blue"]), negative_text="rain", seed=0, **FAST).audios.shape[0] == 1


def test_save_then_load_gives_identical_audio(pipe, tmp_path):
    saved = pipe.save_pretrained(tmp_path / "copy")
    again = CLIPSonicPipeline.from_pretrained(saved, device="cpu")
    assert again.modes == pipe.modes and (saved / "README.md").is_file() and not (saved / "vocoder").exists()
    for kwargs in (dict(text="a dog barking"), dict(text="rain", mode="knn"), dict(image=solid_image((1, 2, 3)))):
        assert np.array_equal(pipe(**kwargs, seed=4, **FAST).audios, again(**kwargs, seed=4, **FAST).audios)


def test_long_text_is_truncated_with_a_warning(pipe, caplog):
    with caplog.at_level(logging.WARNING):
        out = pipe(text="dog " * 120, mode="zs", seed=0, **FAST)
    assert out.audios.shape[0] == 1 and "truncated" in caplog.text


@pytest.mark.parametrize("kwargs, match", [
    (dict(), "no query"),
    (dict(text="a", image=np.zeros((4, 4, 3), np.uint8)), "one kind"),
    (dict(text="   "), "empty"),
    (dict(text=[]), "empty list"),
    (dict(text="a", guidance_scale=-1), "guidance"),
    (dict(text="a", num_inference_steps=0, prior_steps=4), "num_inference_steps"),
    (dict(text="a", seconds=0), "seconds"),
    (dict(text="a", seconds=float("nan")), "seconds"),
    (dict(text="a", seconds=MAX_SECONDS + 1), "limit"),
    (dict(text="a", mode="iq"), "does not take a text"),
    (dict(image=np.zeros((4, 4, 3), np.uint8), mode="zs"), "does not take a image"),
    (dict(text="a", mode="fancy"), "unknown mode"),
    (dict(text="a", sampler="euler"), "unknown sampler"),
    (dict(text="a", num_samples=0), "num_samples"),
    (dict(text="a", seed=[1, 2]), "2 seeds for 1"),
    (dict(image=np.zeros((4, 4), np.uint8)), "uint8"),
    (dict(text="a", negative_text=" "), "negative_text"),
    (dict(text="a", prior_steps=0), "prior_steps"),
    (dict(text="a", mode="knn", knn_k=0), "knn_k"),
])
def test_bad_calls_raise_one_clear_error(pipe, kwargs, match):
    with pytest.raises(ClipsonicError, match=match):
        pipe(**{**FAST, **kwargs})


def test_unreadable_files_raise_clear_errors(pipe, tmp_path):
    (tmp_path / "fake.png").write_bytes(b"not a png")
    with pytest.raises(ClipsonicError, match="not a readable image"):
        pipe(image=tmp_path / "fake.png", **FAST)
    with pytest.raises(ClipsonicError, match="no such image"):
        pipe(image=tmp_path / "missing.png", **FAST)
    audio_only = write_audio(tmp_path / "a.wav", seconds=0.5)
    with pytest.raises(ClipsonicError, match="no video stream"):
        pipe(video=audio_only, **FAST)
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(ClipsonicError, match="empty.mp4"):
        pipe(video=tmp_path / "empty.mp4", **FAST)


@pytest.mark.parametrize("name, audio_seconds, error, match", [
    # Matroska keeps the empty video stream: probing passes, decoding finds nothing
    ("frameless.mkv", 1.0, ClipsonicError, "the video stream has no decodable frames"),
    # mp4 drops an empty track on writing: the file reads as audio-only
    ("frameless.mp4", 1.0, ClipsonicError, "has no video stream"),
    # no audio either: an mp4 with no stream and no timestamps
    ("nothing.mp4", None, ClipsonicError, "cannot tell the duration"),
])
def test_a_video_with_no_frames_raises_one_line_naming_the_file(pipe, tmp_path, name, audio_seconds, error, match):
    path = write_frameless_video(tmp_path / name, audio_seconds=audio_seconds)
    with pytest.raises(error, match=match) as raised:
        pipe(video=path, **FAST)
    message = str(raised.value)
    assert message.startswith(str(path)) and "\n" not in message


def test_loading_refuses_another_clip_and_missing_components(tiny_pipeline_dir, tmp_path):  # noqa: F811
    import shutil

    from support.tiny_clip import make_tiny_clip

    other = make_tiny_clip(tmp_path / "other_clip", seed=1)
    with pytest.raises(ClipsonicError, match=f"{tiny_pipeline_dir}.*trained with {tiny_pipeline_dir.parent / 'tiny_clip'}"):
        CLIPSonicPipeline.from_pretrained(tiny_pipeline_dir, device="cpu", clip_model=other)
    broken = shutil.copytree(tiny_pipeline_dir, tmp_path / "broken")
    (broken / "unet" / "model.safetensors").unlink()
    with pytest.raises(ClipsonicError, match="model.safetensors"):
        CLIPSonicPipeline.from_pretrained(broken, device="cpu")
    shutil.rmtree(broken / "scheduler")
    with pytest.raises(ClipsonicError, match="scheduler"):
        CLIPSonicPipeline.from_pretrained(broken, device="cpu")
    with pytest.raises(ClipsonicError, match="not a clipsonic pipeline"):
        CLIPSonicPipeline.from_pretrained(tmp_path, device="cpu")


def test_without_a_prior_text_defaults_to_the_best_bridge_it_has_and_pd_says_how_to_get_one(tiny_pipeline_dir):  # noqa: F811
    pipe = CLIPSonicPipeline.from_pretrained(tiny_pipeline_dir, device="cpu")
    pipe.prior = None
    assert pipe.default_mode("text") == "knn" and pipe(text="a", seed=0, **FAST).mode == "knn"
    with pytest.raises(ClipsonicError, match="needs a prior") as info:
        pipe(text="a", mode="pd", **FAST)
    message = str(info.value)
    assert "\n" not in message and "train-prior" in message and "attach prior" in message and "Karlo" in message
    assert message.endswith("text runs in knn, shift, zs (default knn)")
    pipe.stats = dataclasses.replace(pipe.stats, image_bank=pipe.stats.image_bank[:0], bank_keys=[], bank_labels=[])
    assert pipe.default_mode("text") == "shift"
    with pytest.raises(ClipsonicError, match=r"text runs in shift, zs \(default shift\)"):
        pipe(text="a", mode="pd", **FAST)
    pipe.stats = None
    assert pipe.default_mode("text") == "zs" and pipe.default_mode("image") == "iq"


class _LouderWhenGuided(torch.nn.Module):
    """An x_0-predicting stand-in for the mel UNet: the conditional branch predicts an in-range mel (a ramp over the
    bands, -0.9 … 0.8), the null branch a flatter, quieter one, so guidance w > 1 extrapolates the mel past [-1, 1],
    as the built-in model's guided mels go louder than either branch (benchmarks/bench_levels.py)."""

    def __init__(self, config) -> None:
        super().__init__()
        self.config, self.anchor = config, torch.nn.Parameter(torch.zeros(()))  # the pipeline reads its device

    def forward(self, x, t, cond, drop_cond):
        ramp = torch.linspace(-0.9, 0.8, x.shape[2]).view(1, 1, -1, 1).expand_as(x)
        return torch.where(drop_cond.view(-1, 1, 1, 1), 0.5 * ramp - 0.3, ramp)


def test_guidance_rescale_keeps_a_strongly_guided_mel_in_range_and_its_audio_at_the_conditional_level(
        tiny_pipeline_dir):  # noqa: F811
    from clipsonic.audio import normalize
    from clipsonic.diffusion import DiffusionConfig, GaussianDiffusion

    pipe = CLIPSonicPipeline.from_pretrained(tiny_pipeline_dir, device="cpu")
    pipe.unet = _LouderWhenGuided(pipe.unet.config)
    pipe.diffusion = GaussianDiffusion(DiffusionConfig(num_timesteps=1000, prediction="x0", learn_sigma=False,
                                                       loss="simple"))
    call = dict(text="a dog", mode="zs", seed=0, num_inference_steps=4)
    ramp = torch.linspace(-0.9, 0.8, 64).view(64, 1).expand(64, TINY_FRAMES)
    before = pipe(**call, guidance_scale=8.0, guidance_rescale=0.0)
    x = normalize(torch.from_numpy(before.mels[0]), pipe.mel)
    assert float((x.abs() > 0.999).float().mean()) > 0.3  # 4.5 ramp + 2.1: clamped at both ends
    after = pipe(**call, guidance_scale=8.0)  # the default rescale
    conditional = pipe(**call, guidance_scale=1.0)
    assert torch.allclose(normalize(torch.from_numpy(after.mels[0]), pipe.mel), ramp, atol=1e-4)
    assert np.allclose(after.mels, conditional.mels, atol=1e-4)
    peak = {name: float(np.abs(out.audios).max()) for name, out in (("before", before), ("after", after),
                                                                    ("conditional", conditional))}
    assert peak["after"] == pytest.approx(peak["conditional"], rel=1e-3) and peak["before"] > 3 * peak["after"]


def test_rescaled_guidance_matches_the_conditional_mean_and_spread_per_row():
    from clipsonic.diffusion.guidance import rescaled_guidance

    gen = torch.Generator().manual_seed(0)
    cond, guided = torch.randn(3, 1, 8, 16, generator=gen), 4 * torch.randn(3, 1, 8, 16, generator=gen) + 2
    assert torch.equal(rescaled_guidance(guided, cond, 0.0), guided)
    full = rescaled_guidance(guided, cond, 1.0)
    assert torch.allclose(full.mean(dim=(1, 2, 3)), cond.mean(dim=(1, 2, 3)), atol=1e-5)
    assert torch.allclose(full.std(dim=(1, 2, 3)), cond.std(dim=(1, 2, 3)), atol=1e-5)
    for row in range(3):  # the shape is the guided one: an increasing affine map of it
        corr = torch.corrcoef(torch.stack([full[row].flatten(), guided[row].flatten()]))[0, 1]
        assert float(corr) == pytest.approx(1.0, abs=1e-5)
    assert torch.allclose(rescaled_guidance(guided, cond, 0.5), (full + guided) / 2, atol=1e-5)


def test_an_attached_vocoder_is_used_and_saved(tiny_pipeline_dir, tmp_path):  # noqa: F811
    import shutil

    from clipsonic.vocoder import GriffinLimConfig, GriffinLimVocoder, attach_vocoder

    pipe_dir = shutil.copytree(tiny_pipeline_dir, tmp_path / "pipe")
    default = CLIPSonicPipeline.from_pretrained(pipe_dir, device="cpu")
    mel = default.mel
    GriffinLimVocoder(mel, GriffinLimConfig(n_iter=4, seed=1)).save_pretrained(tmp_path / "voc")
    attach_vocoder(pipe_dir, tmp_path / "voc")
    pipe = CLIPSonicPipeline.from_pretrained(pipe_dir, device="cpu")
    assert not pipe.vocoder_is_fallback and pipe.vocoder.config.n_iter == 4
    out = pipe(text="a dog", mode="zs", seed=0, **FAST)
    assert not np.allclose(out.audios, default(text="a dog", mode="zs", seed=0, **FAST).audios)
    assert np.array_equal(out.mels, default(text="a dog", mode="zs", seed=0, **FAST).mels)
    copy = CLIPSonicPipeline.from_pretrained(pipe.save_pretrained(tmp_path / "copy"), device="cpu")
    assert np.array_equal(copy(text="a dog", mode="zs", seed=0, **FAST).audios, out.audios)
    forced = CLIPSonicPipeline.from_pretrained(pipe_dir, device="cpu", vocoder="griffin-lim")
    assert forced.vocoder.config.n_iter == GriffinLimConfig().n_iter


def test_bundled_clip_makes_the_folder_self_contained(tiny_pipeline_dir, tiny_clip_dir, tmp_path):  # noqa: F811
    import json
    import shutil

    from support.tiny_clip import make_tiny_clip

    from clipsonic.export import attach_clip

    own = tmp_path / "pipe"
    shutil.copytree(tiny_pipeline_dir, own)
    clip_copy = tmp_path / "clip-copy"
    shutil.copytree(tiny_clip_dir, clip_copy)
    attach_clip(own, clip_copy)
    assert json.loads((own / "model_index.json").read_text())["components"]["clip"] == "clip"
    shutil.rmtree(clip_copy)  # the CLIP the index names is gone: the bundled copy serves
    index = json.loads((own / "model_index.json").read_text())
    index["clip_model"]["model"] = str(clip_copy)
    (own / "model_index.json").write_text(json.dumps(index))
    moved = tmp_path / "moved"
    own.rename(moved)
    pipe = CLIPSonicPipeline.from_pretrained(moved, device="cpu")
    assert pipe(text="rain", mode="zs", seed=0, **FAST).audios.shape == (1, TINY_FRAMES * HOP)
    other = make_tiny_clip(tmp_path / "other-clip", seed=7)
    with pytest.raises(ClipsonicError, match="bundle the CLIP it was trained with"):
        attach_clip(moved, other)
