"""Video queries on a film pipeline (``seq_cond="film"``, clipsonic.pipeline.sequence): the UNet receives the video's
frames aligned to the mel, windows each get their own frames, the audio lasts exactly as long as the video, and
non-film pipelines are untouched."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
from support.synthetic_dataset import make_synthetic_dataset
from support.tiny_pipeline import randomize_zero_layers, tiny_pipeline_dir  # noqa: F401

from clipsonic.audio import mel_spectrogram
from clipsonic.cli import main
from clipsonic.diffusion.windows import WindowedModel, window_starts
from clipsonic.errors import ClipsonicError
from clipsonic.export import read_model_index
from clipsonic.media import load_frames, probe
from clipsonic.models import MelUNet
from clipsonic.pipeline import CLIPSonicPipeline, queries
from clipsonic.sonicworld.video import write_mp4
from clipsonic.train import train

RED, BLUE = (230, 30, 30), (40, 60, 230)


def two_colour_video(path, seconds: int, fps: int = 4, switch: float = 0.5):
    """An H.264 mp4 of 16×16 frames, red before ``switch`` of its length and blue after; silent."""
    n = seconds * fps
    frames = np.empty((n, 16, 16, 3), np.uint8)
    frames[:] = RED
    frames[round(n * switch):] = BLUE
    write_mp4(path, frames, np.zeros(seconds * 16000, np.float32), fps)
    return path


@pytest.fixture(scope="module")
def base(tiny_pipeline_dir):  # noqa: F811
    return CLIPSonicPipeline.from_pretrained(tiny_pipeline_dir, device="cpu")


def film_pipeline(base: CLIPSonicPipeline, training: dict, seq_cond: str = "film") -> CLIPSonicPipeline:
    """``base`` with a random film (or xattn) UNet (its zero-initialised layers, seq_proj too, made random)."""
    with torch.random.fork_rng():
        torch.manual_seed(1)
        unet = MelUNet.from_preset("tiny", cond_dim=base.encoder.dim, seq_cond=seq_cond)
        randomize_zero_layers(unet)
    return CLIPSonicPipeline(unet=unet, diffusion=base.diffusion.config, encoder=base.encoder, mel=base.mel,
                             clip=base.clip, stats=base.stats, training=training)


@pytest.mark.parametrize("seq_cond", ["film", "xattn"])
def test_the_unet_sees_the_video_frame_by_frame_and_the_mean_globally(base, tmp_path, seq_cond):
    pipe = film_pipeline(base, {"frame_rate": 4}, seq_cond)
    video = two_colour_video(tmp_path / "v.mp4", seconds=1)
    seen = []
    pipe.unet.register_forward_pre_hook(lambda m, args, kwargs: seen.append((args, kwargs)), with_kwargs=True)
    out = pipe(video=str(video), seed=0, num_inference_steps=1, guidance_scale=2.0)
    (x, _, cond, drop), kwargs = seen[0]
    seq = kwargs["cond_seq"]  # [2B, F, D]: the conditional and the unconditional branch
    assert seq.shape == (2, x.shape[-1], pipe.encoder.dim) and drop.tolist() == [False, True]
    assert torch.equal(seq[0], seq[1])
    # frames at 4 fps, taken at (j + 0.5) / 4 s; mel frame f (centre (f + 0.5)·32 ms) takes the one on screen then
    # (past the 1-s video, the last)
    frames = pipe.encoder.encode_images(load_frames(video, [0.125, 0.375, 0.625, 0.875]))
    expected = torch.nn.functional.normalize(frames, dim=-1)[[min(int((f + 0.5) * 0.032 * 4), 3) for f in range(32)]]
    assert torch.equal(seq[0], expected)
    assert (seq[0, :16].mean(0) - seq[0, 16:].mean(0)).norm() > 0.1  # red half, blue half
    today, _ = queries.encode_query(queries.parse_query(video=str(video)), pipe.encoder)
    assert torch.equal(cond[0], today[0]) and np.array_equal(out.condition[0], today[0].numpy())


def test_a_negative_text_replaces_the_unconditional_rows_sequence_too(base, tmp_path):
    pipe = film_pipeline(base, {"frame_rate": 4})
    seen = []
    pipe.unet.register_forward_pre_hook(lambda m, args, kwargs: seen.append((args, kwargs)), with_kwargs=True)
    pipe(video=str(two_colour_video(tmp_path / "v.mp4", seconds=1)), negative_text="rain", mode="iq", seed=0,
         num_inference_steps=1, guidance_scale=2.0)
    (_, _, cond, drop), kwargs = seen[0]
    seq = kwargs["cond_seq"]
    assert not drop.any() and torch.equal(seq[1], cond[1].expand_as(seq[1])) and not torch.equal(seq[0], seq[1])


def test_a_film_pipeline_without_its_frame_rate_is_refused(base, tmp_path):
    with pytest.raises(ClipsonicError, match="no training.frame_rate.*re-export"):
        film_pipeline(base, {})(video=str(two_colour_video(tmp_path / "v.mp4", seconds=1)), seed=0)


class Recorder(torch.nn.Module):
    """Returns ``x`` and records what it was called with."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x, t, cond, drop_cond=None, **seq):
        self.calls.append((x, seq))
        return x


def test_windows_each_get_the_sequence_of_their_frames():
    batch, frames, window = 2, 20, 8
    seq = torch.randn(batch, frames, 3)
    x = seq[:, None, None, :, 0].expand(batch, 1, 4, frames).contiguous()  # x's frame f holds seq's row f
    model = Recorder()
    out = WindowedModel(model, window)(x, torch.zeros(batch), torch.zeros(batch, 3), None, cond_seq=seq)
    crops, got = model.calls[0][0], model.calls[0][1]["cond_seq"]
    for k, s in enumerate(window_starts(frames, window, window // 2)):
        for b in range(batch):  # window-major, like the mel crops
            assert torch.equal(got[k * batch + b], seq[b, s:s + window])
            assert torch.equal(crops[k * batch + b, 0, 0], got[k * batch + b, :, 0])
    plain = WindowedModel(model, window)(x, torch.zeros(batch), torch.zeros(batch, 3))
    assert model.calls[1][1] == {} and torch.allclose(plain, x) and torch.allclose(out, x)
    with pytest.raises(ValueError, match="one per frame"):
        WindowedModel(model, window)(x, torch.zeros(batch), torch.zeros(batch, 3), cond_seq=seq[:, :-1])


def spectral_flux(logmel: np.ndarray) -> np.ndarray:
    """Mean positive change of the log-mel ``[n_mels, F]`` from each frame to the next: ``[F - 1]``."""
    return np.maximum(np.diff(logmel, axis=1), 0).mean(0)


def test_a_30_s_video_gives_30_s_of_audio_without_seams_at_the_window_joins(base, tmp_path):
    pipe = film_pipeline(base, {"frame_rate": 4})
    pipe.save_pretrained(tmp_path / "film")
    video = two_colour_video(tmp_path / "v.mp4", seconds=30, switch=0.5)
    main(["generate", "--model", str(tmp_path / "film"), "--video", str(video), "-o", str(tmp_path / "out.wav"),
          "--steps", "2", "--seed", "0", "--device", "cpu"])
    audio, rate = sf.read(tmp_path / "out.wav", dtype="float32")
    assert len(audio) == round(probe(video).duration * rate) == 30 * rate
    logmel = mel_spectrogram(torch.from_numpy(audio), pipe.mel).numpy()  # [n_mels, F]
    flux = spectral_flux(logmel)  # flux[f]: frame f → f + 1
    window = pipe.mel.clip_frames // 8 * 8
    starts = window_starts(logmel.shape[1], window, window // 2)
    joins = sorted({s - 1 for s in starts[1:]} | {s + window - 1 for s in starts[:-1]})  # into a window, out of one
    # measured (recomputed mel, 2 steps, seed 0): the largest join flux is 0.90 of the largest elsewhere
    assert flux[joins].max() <= np.delete(flux, joins).max()


def test_a_non_film_pipeline_answers_a_video_with_the_mean_embedding_as_before(base, tmp_path):
    video = str(two_colour_video(tmp_path / "v.mp4", seconds=1))
    out = base(video=video, seed=3, num_inference_steps=2)
    mean, durations = queries.encode_query(queries.parse_query(video=video), base.encoder)
    before = base(image_embeds=mean, seed=3, num_inference_steps=2)  # one training clip: the same 32 frames
    samples = round(durations[0] * base.sample_rate)
    assert out.audios.shape[1] == samples < before.audios.shape[1]
    assert np.array_equal(out.audios, before.audios[:, :samples]) and np.array_equal(out.mels, before.mels)


def test_the_export_of_a_film_run_records_its_frame_rate(tmp_path):
    info = make_synthetic_dataset(tmp_path / "d", 4, 2, frames=16, shards=1, frame_rate=8.0)
    flags = {"preset": "tiny", "batch_size": 2, "num_workers": 0, "val_every": 0, "sample_every": 0, "max_steps": 1,
             "bundle_clip": False}
    train(info.root, tmp_path / "film", {"train": flags, "unet": {"seq_cond": "film"}})
    assert read_model_index(tmp_path / "film" / "pipeline").training["frame_rate"] == 8.0
