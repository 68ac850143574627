"""Frame sequences (``preprocess --frame-rate R``): N CLIP frame embeddings per clip, aligned to the mel, in the
shards (``seq.npy``), dataset.json and the loader; datasets without them unchanged."""

import json
import tarfile
from fractions import Fraction

import numpy as np
import pytest
from support.bad_input import error_line
from support.media_files import PALETTE, close_colour, write_video

from clipsonic.audio import MelConfig
from clipsonic.config import ConfigError
from clipsonic.data.clips import ClipOptions
from clipsonic.data.dataset import read_dataset_info
from clipsonic.data.loader import StreamLayout, TrainStream, iter_split, load_fixed_samples
from clipsonic.data.preprocess import PreprocessOptions, preprocess
from clipsonic.encoders import load_clip
from clipsonic.errors import ClipsonicError
from clipsonic.media import load_frames

MEL = MelConfig(clip_samples=16384)  # 1.024 s = 32 mel frames: at 4 fps, N = round(4.096) = 4 (8 mel frames each)
FIELDS = ("mel.npy", "clip.npy", "seq.npy", "json")


def quarter_colour(t: float) -> tuple[int, int, int]:
    """A new solid colour every 0.25 s, so each sequence frame of a clip shows its own moment."""
    return PALETTE[int(t * 4 + 1e-9) % len(PALETTE)]


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    write_video(root / "a.mp4", seconds=2.1, colour=quarter_colour, tone_hz=440.0)  # 2 whole clips
    write_video(root / "b.mp4", seconds=1.6, colour=quarter_colour, tone_hz=660.0)  # 1 whole + 1 padded (0.576 s)
    return root


def options(clip_dir, rate=None, **kw):
    return PreprocessOptions(clip_model=str(clip_dir), clips=ClipOptions(frame_rate=rate, keep_jpg=False), **kw)


@pytest.fixture(scope="module")
def seq_ds(videos, tmp_path_factory, tiny_clip_dir):
    return preprocess(videos, tmp_path_factory.mktemp("seq") / "ds", options=options(tiny_clip_dir, 4.0), mel=MEL)


@pytest.fixture(scope="module")
def plain_ds(videos, tmp_path_factory, tiny_clip_dir):
    return preprocess(videos, tmp_path_factory.mktemp("plain") / "ds", options=options(tiny_clip_dir), mel=MEL)


def on_screen(t: float, fps: int = 25) -> tuple[int, int, int]:
    """The colour of the frame write_video shows at ``t`` (pts <= t < next pts)."""
    return quarter_colour(float(Fraction(int(Fraction(t) * fps), fps)))


def test_sequences_are_the_embeddings_of_the_frames_at_mel_aligned_times(seq_ds, tiny_clip_dir):
    info = read_dataset_info(seq_ds.root)
    assert info.frame_rate == 4.0 and info.counts["clips"] == 4 and info.counts["padded_clips"] == 1
    enc = load_clip(tiny_clip_dir)
    samples = list(iter_split(info, "train", FIELDS))
    assert len(samples) == 4
    for s in samples:
        meta, seq = s["json"], s["seq.npy"]
        assert seq.shape == (4, 32) and s["clip.npy"].shape == (3, 32)
        times = meta["seq_times"]
        if meta["start"] == 1.024 and meta["source"].endswith("b.mp4"):  # padded: times past 0.576 s hold the last
            assert times[:2] == [1.152, 1.408] and times[2] == times[3] == pytest.approx(1.472, abs=2e-3)
        else:  # centres of 4 equal parts of the clip: frame i covers mel frames [8i, 8i + 8)
            assert times == [round(meta["start"] + (i + 0.5) * 0.256, 6) for i in range(4)]
        frames = load_frames(meta["source"], times)
        assert all(close_colour(f, on_screen(t)) for f, t in zip(frames, times, strict=True))
        np.testing.assert_allclose(seq, enc.encode_images(frames).numpy(), atol=3e-3)
    whole = next(s["seq.npy"] for s in samples if s["json"]["start"] == 0.0)
    assert np.abs(whole[0] - whole[1]).max() > 0.05  # the rows follow the picture, not one frame repeated


def test_without_a_frame_rate_the_dataset_is_as_before(plain_ds, seq_ds):
    data = json.loads((plain_ds.root / "dataset.json").read_text())
    assert "frame_rate" not in data["options"]["options"]["clips"] and plain_ds.frame_rate is None
    for shard in plain_ds.root.glob("*.tar"):
        with tarfile.open(shard) as tar:
            names = tar.getnames()
        assert names and not [n for n in names if n.endswith(".seq.npy")]
    plain = {s["__key__"]: s for s in iter_split(plain_ds, "train")}
    for s in iter_split(seq_ds, "train", FIELDS):  # the sequence changes nothing else of a sample
        assert np.array_equal(s["mel.npy"], plain[s["__key__"]]["mel.npy"])
        np.testing.assert_allclose(s["clip.npy"], plain[s["__key__"]]["clip.npy"], atol=2e-3)
        assert {k: v for k, v in s["json"].items() if k != "seq_times"} == plain[s["__key__"]]["json"]
    batch = next(iter(TrainStream(plain_ds, layout(plain_ds))))
    assert "cond_seq" not in batch and "cond_seq" not in load_fixed_samples(plain_ds, "train", 2)


def layout(info):
    return StreamLayout(shards=tuple(str(p) for p in info.shard_paths("train")), batch_size=3, seed=0, rank=0,
                        world_size=1, num_workers=0, shuffle_buffer=2)


def test_loader_batches_carry_the_sequences(seq_ds):
    stored = {s["__key__"]: s["seq.npy"] for s in iter_split(seq_ds, "train", FIELDS)}
    batch = next(iter(TrainStream(seq_ds, layout(seq_ds))))
    assert batch["cond_seq"].shape == (3, 4, 32) and batch["cond"].shape == (3, 32)
    for key, seq in zip(batch["keys"], batch["cond_seq"], strict=True):
        assert np.array_equal(seq.numpy(), stored[key])
    fixed = load_fixed_samples(seq_ds, "train", 2)
    assert fixed["cond_seq"].shape == (2, 4, 32)
    assert np.array_equal(fixed["cond_seq"][0].numpy(), stored[fixed["keys"][0]])


def test_a_finished_or_interrupted_run_refuses_another_frame_rate(seq_ds, videos, tmp_path, tiny_clip_dir):
    with pytest.raises(ClipsonicError, match="built from other inputs or options"):
        preprocess(videos, seq_ds.root, options=options(tiny_clip_dir, 8.0), mel=MEL)

    def stop(progress):  # killed after the first committed shard: an interrupted run
        if progress.items_done == 2:
            raise KeyboardInterrupt

    one_item = dict(encode_group=1, shard_size_mb=1e-6)
    with pytest.raises(KeyboardInterrupt):
        preprocess(videos, tmp_path / "ds", options=options(tiny_clip_dir, 4.0, **one_item), mel=MEL, progress=stop)
    for rate in (8.0, None):
        with pytest.raises(ClipsonicError, match=rf"\(then vs now: clips\.frame_rate: 4\.0 vs {rate}\)"):
            preprocess(videos, tmp_path / "ds", options=options(tiny_clip_dir, rate, **one_item), mel=MEL)


def test_a_video_slower_than_the_rate_holds_each_frame_while_it_is_on_screen(tmp_path, tiny_clip_dir):
    slow = tmp_path / "slow"
    slow.mkdir()
    write_video(slow / "c.mp4", seconds=1.1, fps=5, colour=quarter_colour)  # 5 video frames per clip, 8 asked
    info = preprocess(slow, tmp_path / "out", options=options(tiny_clip_dir, 8.0), mel=MEL)
    [sample] = list(iter_split(info, "train", FIELDS))
    times, seq = sample["json"]["seq_times"], sample["seq.npy"]
    assert seq.shape == (8, 32) and times == [round((i + 0.5) * 0.128, 6) for i in range(8)]
    shown = [on_screen(t, fps=5) for t in times]  # the frame on screen at each time: some are held for two rows
    assert len(set(shown)) < 8
    frames = load_frames(slow / "c.mp4", times)
    assert all(close_colour(f, c) for f, c in zip(frames, shown, strict=True))
    np.testing.assert_allclose(seq, load_clip(tiny_clip_dir).encode_images(frames).numpy(), atol=3e-3)


def test_bad_frame_rates_are_refused_in_one_line(videos, tmp_path, tiny_clip_dir, capsys):
    with pytest.raises(ConfigError, match="frame_rate must be > 0"):
        ClipOptions(frame_rate=0.0)
    with pytest.raises(ClipsonicError, match=r"--frame-rate 0\.4 gives 0 frames per 1\.024-s clip; use a rate from"):
        preprocess(videos, tmp_path / "low", options=options(tiny_clip_dir, 0.4), mel=MEL)
    with pytest.raises(ClipsonicError, match=r"--frame-rate 40 gives 41 frames per 1\.024-s clip"):
        preprocess(videos, tmp_path / "high", options=options(tiny_clip_dir, 40.0), mel=MEL)
    line = error_line(["preprocess", str(videos), "--out", str(tmp_path / "cli"), "--frame-rate", "-2"], capsys)
    assert "frame_rate must be > 0, got -2" in line
