"""Long sounds (MultiDiffusion windows, continuation), variations (SDEdit) and inpainting on the tiny pipeline, through
the diffusion core, ``CLIPSonicPipeline.__call__`` and ``clipsonic generate``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile
import torch
from support.tiny_pipeline import TINY_FRAMES, tiny_pipeline_dir  # noqa: F401

from clipsonic.audio import denormalize, mel_spectrogram, normalize
from clipsonic.cli import main
from clipsonic.diffusion.windows import WindowedModel, window_starts
from clipsonic.errors import ClipsonicError
from clipsonic.pipeline import CLIPSonicPipeline, edits
from clipsonic.pipeline.outputs import read_sidecar

HOP, RATE = 512, 16000
FAST = dict(num_inference_steps=4, mode="zs")


@pytest.fixture(scope="module")
def pipe(tiny_pipeline_dir):  # noqa: F811
    return CLIPSonicPipeline.from_pretrained(tiny_pipeline_dir, device="cpu")


@pytest.fixture(scope="module")
def source() -> np.ndarray:
    """One training clip (1.024 s) of a tone over soft noise, float32 at 16 kHz."""
    t = np.arange(TINY_FRAMES * HOP) / RATE
    noise = np.random.default_rng(0).standard_normal(len(t))
    return (0.3 * np.sin(2 * np.pi * 660 * t) + 0.05 * noise).astype(np.float32)


def source_mel(pipe, audio: np.ndarray) -> np.ndarray:
    """What the pipeline keeps of ``audio``: its log-mel through the diffusion space's [-1, 1]. [n_mels, frames]"""
    x = normalize(mel_spectrogram(torch.from_numpy(audio), pipe.mel), pipe.mel).clamp(-1, 1)
    return denormalize(x, pipe.mel).numpy()


class Widths(torch.nn.Module):
    """The UNet, recording the frame count of every input it sees."""

    def __init__(self, unet) -> None:
        super().__init__()
        self.unet, self.config, self.seen = unet, unet.config, []

    def forward(self, x, t, cond, drop_cond=None):
        self.seen.append(x.shape[-1])
        return self.unet(x, t, cond, drop_cond)


# --- windows (diffusion/windows.py) ------------------------------------------------------------------------------

def test_windows_are_the_model_itself_within_one_window_and_average_a_pointwise_model_exactly(pipe):
    x, t = torch.randn(2, 1, 64, TINY_FRAMES), torch.tensor([10, 500])
    cond, drop = torch.nn.functional.normalize(torch.randn(2, 32), dim=-1), torch.tensor([False, True])
    windowed = WindowedModel(pipe.unet, TINY_FRAMES)
    assert torch.equal(windowed(x, t, cond, drop), pipe.unet(x, t, cond, drop))

    def pointwise(x, t, cond, drop_cond):  # any overlap-average of a pointwise map is the map itself
        return torch.cat([2 * x, x.sin()], dim=1)

    long = torch.randn(2, 1, 64, 5 * TINY_FRAMES // 2 + 8)
    assert torch.allclose(WindowedModel(pointwise, TINY_FRAMES)(long, t, cond, drop), pointwise(long, t, cond, drop),
                          atol=1e-6)
    assert window_starts(88, 32, 16) == [0, 16, 32, 48, 56] and window_starts(32, 32, 16) == [0]


@pytest.mark.parametrize("long, widths", [(None, {TINY_FRAMES}), ("continuation", {TINY_FRAMES}), ("single", {96})])
def test_a_long_sound_has_its_length_and_windows_see_only_the_training_length(pipe, long, widths):
    unet, pipe.unet = pipe.unet, Widths(pipe.unet)
    try:
        out = pipe(text="a red sound", seconds=3.0, seed=0, long=long, **FAST)
        seen = pipe.unet.seen
    finally:
        pipe.unet = unet
    assert out.mels.shape == (1, 64, 96) and out.audios.shape == (1, 96 * HOP)
    assert set(seen) == widths and np.isfinite(out.audios).all()
    if long is None:  # windows at 0, 16, ..., 64: one batched forward of 5 windows x 2 guidance branches per step
        assert len(seen) == FAST["num_inference_steps"]


# --- variations (SDEdit) -----------------------------------------------------------------------------------------

def test_strength_zero_gives_the_source_back_and_distance_grows_with_strength(pipe, source):
    want = source_mel(pipe, source)
    mels = {s: pipe(text="blue", audio=source, strength=s, seed=1, **FAST).mels[0] for s in (0.0, 0.25, 0.5, 1.0)}
    assert mels[0.0].shape == want.shape and np.allclose(mels[0.0], want, atol=1e-5)
    distance = {s: float(np.abs(m - want).mean()) for s, m in mels.items()}
    assert distance[0.0] < 1e-5 < distance[0.25] < distance[0.5] < distance[1.0], distance
    again = pipe(text="blue", audio=source, strength=0.5, seed=1, **FAST).mels[0]
    other = pipe(text="blue", audio=source, strength=0.5, seed=2, **FAST).mels[0]
    assert np.array_equal(again, mels[0.5]) and not np.allclose(other, mels[0.5])
    silent = pipe(text="red", audio=np.zeros(TINY_FRAMES * HOP, np.float32), strength=0.5, **FAST)  # silence is fine
    assert np.isfinite(silent.audios).all()


# --- inpainting and continuation ---------------------------------------------------------------------------------

@pytest.mark.parametrize("sampler", ["ddim", "dpmpp-2m", "unipc", "ddpm"])
def test_the_kept_region_equals_the_source_mel_exactly(pipe, source, sampler):
    want = source_mel(pipe, source)
    out = pipe(text="green", audio=source, mask=(0.3, 0.6), sampler=sampler, seed=3, num_samples=2, **FAST)
    span = slice(round(0.3 * RATE / HOP), round(0.6 * RATE / HOP))  # frames 9..18
    kept = np.ones(TINY_FRAMES, bool)
    kept[span] = False
    assert np.array_equal(out.mels[:, :, kept], np.broadcast_to(want[:, kept], (2, 64, int(kept.sum()))))
    assert np.abs(out.mels[:, :, span] - want[:, span]).mean() > 0.1  # the span is new
    assert not np.allclose(out.mels[0, :, span], out.mels[1, :, span])  # each row its own seed


def test_continuation_keeps_the_source_but_its_edge_frames_and_reaches_the_requested_length(pipe, source):
    kept = TINY_FRAMES - edits.edge_frames(pipe.mel)  # the last 2 frames' mel saw past the source's end: regenerated
    assert kept == TINY_FRAMES - 2
    for long in ("windows", "continuation"):
        out = pipe(text="yellow", audio=source, seconds=2.5, long=long, seed=4, **FAST)
        assert out.mels.shape == (1, 64, 80)  # 2.5 s rounds to 80 frames
        assert np.array_equal(out.mels[0, :, :kept], source_mel(pipe, source)[:, :kept])
        assert not np.allclose(out.mels[0, :, kept:TINY_FRAMES], source_mel(pipe, source)[:, kept:])
        assert np.isfinite(out.audios).all() and out.audios.shape == (1, 80 * HOP)
    short = pipe(text="yellow", audio=source[: 20 * HOP], seconds=1.024, seed=4, **FAST)  # 20 frames, then 12 new
    assert np.array_equal(short.mels[0, :, :18], source_mel(pipe, source[: 20 * HOP])[:, :18])


@pytest.mark.parametrize("kwargs, match", [
    (dict(audio="{tmp}/missing.wav", strength=0.5), "missing.wav"),
    (dict(audio=np.zeros(0, np.float32), strength=0.5), "too short"),
    (dict(audio=np.zeros((2, 4096), np.float32), strength=0.5), "mono samples"),
    (dict(audio="SOURCE"), "needs strength"),
    (dict(strength=0.5), "pass audio"),
    (dict(audio="SOURCE", strength=1.5), "strength must be"),
    (dict(audio="SOURCE", mask=(0.5, 0.2)), "mask must be"),
    (dict(audio="SOURCE", mask=(3.0, None)), "covers no frame"),
    (dict(long="sideways"), "long must be"),
])
def test_bad_edits_raise_one_line(pipe, source, tmp_path, kwargs, match):
    if isinstance(kwargs.get("audio"), str):
        kwargs["audio"] = source if kwargs["audio"] == "SOURCE" else kwargs["audio"].replace("{tmp}", str(tmp_path))
    with pytest.raises(ClipsonicError, match=match) as info:
        pipe(text="red", **FAST, **kwargs)
    assert "\n" not in str(info.value)


# --- clipsonic generate --------------------------------------------------------------------------------------------

def _generate(capsys, *argv):
    rc = main(["-q", "generate", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_edits_write_files_and_their_sidecars_replay(tiny_pipeline_dir, source, tmp_path, capsys):  # noqa: F811
    wav = tmp_path / "src.wav"
    soundfile.write(wav, source, RATE, subtype="FLOAT")
    model = ["--model", str(tiny_pipeline_dir), "--steps", "2", "--mode", "zs", "--seed", "5"]
    runs = {"var.wav": ["--init-audio", str(wav), "--strength", "0.4"],
            "fill.wav": ["--init-audio", str(wav), "--mask", "0.3:"],
            "more.wav": ["--continue", str(wav), "--seconds", "2", "--long", "continuation"]}
    for name, flags in runs.items():
        rc, out, err = _generate(capsys, *model, "--text", "a bell", *flags, "-o", str(tmp_path / name))
        assert rc == 0, err
        assert out.split() == [str(tmp_path / name)]
        side = read_sidecar(tmp_path / name.replace(".wav", ".json"))["settings"]
        assert side["audio"] == str(wav.resolve())
    assert soundfile.info(str(tmp_path / "more.wav")).frames == 64 * HOP
    assert read_sidecar(tmp_path / "fill.json")["settings"]["mask"] == [0.3, None]
    assert read_sidecar(tmp_path / "more.json")["settings"]["long"] == "continuation"
    rc, _, err = _generate(capsys, "--from", str(tmp_path / "more.json"), "-o", str(tmp_path / "again.wav"))
    assert rc == 0, err
    assert (tmp_path / "again.wav").read_bytes() == (tmp_path / "more.wav").read_bytes()
    rc, _, err = _generate(capsys, "--from", str(tmp_path / "var.json"), "--strength", "1", "-o", str(tmp_path / "x.wav"))
    assert rc == 2 and "drop --strength" in err
    # a sidecar written before editing existed (no audio, strength, mask, long) still replays
    old = json.loads((tmp_path / "var.json").read_text())
    for key in ("audio", "strength", "mask", "long"):
        del old["settings"][key]
    (tmp_path / "old.json").write_text(json.dumps(old))
    rc, _, err = _generate(capsys, "--from", str(tmp_path / "old.json"), "-o", str(tmp_path / "old.wav"))
    assert rc == 0, err


@pytest.mark.parametrize("flags, message", [
    (["--init-audio", "{wav}", "--mask", "1-2"], "--mask takes START:END"),
    (["--init-audio", "{wav}", "--mask", ":2"], "--mask takes START:END"),
    (["--init-audio", "{wav}", "--strength", "2"], "strength must be"),
    (["--init-audio", "{wav}"], "needs strength"),
    (["--strength", "0.5"], "--init-audio"),
    (["--continue", "{wav}"], "needs --seconds longer than the file (1.02 s)"),
    (["--continue", "{wav}", "--seconds", "0.5"], "needs --seconds longer"),
    (["--continue", "{tmp}/none.wav", "--seconds", "3"], "none.wav"),
    (["--continue", "{wav}", "--seconds", "3", "--mask", "1:"], "drop --init-audio and --mask"),
])
def test_cli_bad_edit_flags_are_one_line_exit_2(tiny_pipeline_dir, source, tmp_path, capsys, flags, message):  # noqa: F811
    wav = tmp_path / "src.wav"
    soundfile.write(wav, source, RATE, subtype="FLOAT")
    flags = [f.replace("{wav}", str(wav)).replace("{tmp}", str(tmp_path)) for f in flags]
    rc, _, err = _generate(capsys, "--model", str(tiny_pipeline_dir), "--steps", "2", "--text", "a", *flags,
                           "-o", str(tmp_path / "o.wav"))
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("note:")]
    assert rc == 2 and len(lines) == 1 and message in lines[0], err
    assert not (tmp_path / "o.wav").exists()


def test_a_distilled_pipeline_makes_long_sounds_but_refuses_to_edit_in_one_line(pipe, source):
    config = pipe.diffusion.config.replace(distilled_steps=2, distilled_guidance_scale=1.5, distilled_guidance_rescale=1.0)
    student = CLIPSonicPipeline(unet=pipe.unet, diffusion=config, encoder=pipe.encoder, mel=pipe.mel, clip=pipe.clip,
                                stats=pipe.stats, training={"distilled": {"from": "runs/teacher"}})
    assert student(text="red", mode="zs", seconds=2.0, seed=0).mels.shape == (1, 64, 64)
    with pytest.raises(ClipsonicError, match="distilled to 2 step.*cannot edit audio; use runs/teacher"):
        student(text="red", mode="zs", audio=source, strength=0.5)
