"""End to end: real videos (several codecs, plus broken ones) → dataset directory, with a tiny CLIP."""

import errno
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import webdataset as wds
from support.bad_input import error_line
from support.media_files import truncate, write_audio, write_video

from clipsonic.audio import MelConfig
from clipsonic.cli import main
from clipsonic.data import dataset as dataset_module
from clipsonic.data.clips import ClipOptions
from clipsonic.data.dataset import read_dataset_info
from clipsonic.data.preprocess import PreprocessOptions, _resolve_sharding, preprocess
from clipsonic.encoders import load_clip
from clipsonic.errors import ClipsonicError
from clipsonic.plotting import mel_band_edges_hz

MEL = MelConfig(clip_samples=16384)  # 1.024 s = 32 frames keeps the test fast


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    for sub in ("dog", "piano", "bad"):
        (root / sub).mkdir()
    write_video(root / "dog" / "a.mp4", seconds=2.5, tone_hz=440.0)  # → 2 clips
    write_video(root / "dog" / "b.mkv", seconds=2.2, video_codec="mpeg4", audio_codec="libmp3lame", tone_hz=550.0)
    write_video(root / "piano" / "c.webm", seconds=1.6, video_codec="libvpx-vp9", audio_codec="libopus",
                sample_rate=48000, tone_hz=880.0)  # → 2 clips (the 0.58-s tail ≥ half a clip: padded)
    write_video(root / "piano" / "d.avi", seconds=0.7, video_codec="mpeg4", audio_codec="libmp3lame")  # padded (≥ 0.5 clip)
    write_video(root / "piano" / "e.mov", seconds=2.1, audio_codec="aac", channels=6, tone_hz=330.0)
    write_video(root / "bad" / "short.mp4", seconds=0.3)  # too short
    write_video(root / "bad" / "silent.mp4", seconds=1.5, audio=lambda t: np.zeros((2, len(t))))
    write_video(root / "bad" / "noaudio.mp4", seconds=1.5, audio_codec=None)
    truncate(write_video(root / "bad" / "truncated.mp4", seconds=2.0), 0.3)
    (root / "bad" / "empty.mp4").write_bytes(b"")
    (root / "bad" / "text.mp4").write_text("this is not a video\n" * 50)
    return root


def options(tiny_clip_dir, **kw):
    base = dict(clip_model=str(tiny_clip_dir), clips=ClipOptions(keep_audio=True), test_fraction=0.3, encode_group=3)
    return PreprocessOptions(**{**base, **kw})


def read_samples(info):
    out = {}
    for split in info.splits:
        urls = [str(p) for p in info.shard_paths(split)]
        for s in wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode("rgb8"):
            out[s["__key__"]] = s
    return out


COUNTS = {"inputs": 11, "clips": 9, "rejected": 6, "silent_clips": 1, "padded_clips": 2, "dropped_tails": 3}


def test_end_to_end(videos, tmp_path, tiny_clip_dir, caplog):
    with caplog.at_level("INFO", logger="clipsonic.data.preprocess"):
        info = preprocess(videos, tmp_path / "ds", options=options(tiny_clip_dir), mel=MEL)
    assert info.counts == COUNTS
    # tails, once per file: a (0.45 s), b (0.15 s), e (≈0.05 s) dropped; c (0.58 s) and d (0.7 s) padded
    edges = sorted((Path(m.split(":")[0]).name, m.split(": ")[1].split(" ")[0]) for m in caplog.messages
                   if "padded its last clip" in m or "dropped its last" in m)
    assert edges == [("a.mp4", "dropped"), ("b.mkv", "dropped"), ("c.webm", "padded"), ("d.avi", "padded"),
                     ("e.mov", "dropped")]
    rejected = {Path(r["path"]).name: r["reason"] for r in read_dataset_info(tmp_path / "ds").rejected}
    assert set(rejected) == {"short.mp4", "silent.mp4", "noaudio.mp4", "truncated.mp4", "empty.mp4", "text.mp4"}
    assert rejected["short.mp4"].startswith("too short") and rejected["silent.mp4"].startswith("silent")
    assert rejected["noaudio.mp4"] == "no audio stream"
    again = read_dataset_info(tmp_path / "ds")
    assert again.mel == MEL and again.clip.dim == 32 and again.frames_per_clip == 3
    assert sum(again.num_clips(s) for s in again.splits) == 9
    samples = read_samples(again)
    assert len(samples) == 9
    enc = load_clip(tiny_clip_dir)
    for s in samples.values():
        assert s["mel.npy"].dtype == np.float16 and s["mel.npy"].shape == (64, 32)
        assert s["clip.npy"].dtype == np.float16 and s["clip.npy"].shape == (3, 32)
        np.testing.assert_allclose(np.linalg.norm(s["clip.npy"].astype(np.float32), axis=1), 1.0, atol=2e-3)
        meta = s["json"]
        assert meta["label"] in ("dog", "piano") and len(meta["frame_times"]) == 3
        assert s["jpg"].shape[-1] == 3  # decoded middle frame
        audio, rate = sf.read(io.BytesIO(s["flac"]), dtype="float32")
        assert audio.shape == (16384,) and rate == 16000
        # the stored embedding is the CLIP embedding of the frame at the stored time
        from clipsonic.media import load_frames

        frame = load_frames(meta["source"], meta["frame_times"][:1])[0]
        np.testing.assert_allclose(s["clip.npy"][0].astype(np.float32), enc.encode_images([frame])[0].numpy(), atol=3e-3)
    by_source = {}
    for s in samples.values():
        by_source.setdefault(Path(s["json"]["source"]).name, []).append(s["json"]["start"])
    assert sorted(by_source["a.mp4"]) == [0.0, 1.024] and by_source["d.avi"] == [0.0]
    assert sorted(by_source["c.webm"]) == [0.0, 1.024]
    # every clip of a video lands in the same split
    split_of = {}
    for split in again.splits:
        for p in again.shard_paths(split):
            for s in wds.WebDataset(str(p), shardshuffle=False, empty_check=False):
                assert split_of.setdefault(json.loads(s["json"])["source"], split) == split
    # the louder mel bins sit at the tone: 440 Hz for a.mp4
    mel_a = next(s["mel.npy"] for s in samples.values() if s["json"]["source"].endswith("a.mp4"))
    centres = mel_band_edges_hz(MEL)
    assert int(mel_a.astype(np.float32).mean(1).argmax()) == int(np.abs(centres - 440.0).argmin())


def test_deterministic_and_idempotent(videos, tmp_path, tiny_clip_dir):
    a = preprocess(videos, tmp_path / "a", options=options(tiny_clip_dir), mel=MEL)
    b = preprocess(videos, tmp_path / "b", options=options(tiny_clip_dir), mel=MEL, workers=2)
    names = sorted(p.name for p in (tmp_path / "a").glob("*.tar"))
    assert names == sorted(p.name for p in (tmp_path / "b").glob("*.tar")) and names
    for n in names:
        assert (tmp_path / "a" / n).read_bytes() == (tmp_path / "b" / n).read_bytes()
    assert a.counts == b.counts
    # a finished dataset is recognised, not rebuilt
    mtime = (tmp_path / "a" / "dataset.json").stat().st_mtime_ns
    preprocess(videos, tmp_path / "a", options=options(tiny_clip_dir), mel=MEL)
    assert (tmp_path / "a" / "dataset.json").stat().st_mtime_ns == mtime


def test_refuses_other_mel_or_clip(videos, tmp_path, tiny_clip_dir):
    preprocess(videos, tmp_path / "ds", options=options(tiny_clip_dir), mel=MEL)
    with pytest.raises(ClipsonicError, match="n_mels: 64 vs 80"):
        preprocess(videos, tmp_path / "ds", options=options(tiny_clip_dir), mel=MEL.replace(n_mels=80))
    from support.tiny_clip import make_tiny_clip

    other = make_tiny_clip(tmp_path / "clip2", seed=1)
    with pytest.raises(ClipsonicError, match="tiny_clip"):
        preprocess(videos, tmp_path / "ds", options=options(tiny_clip_dir, clip_model=str(other)), mel=MEL)


def test_two_way_sharded_run_merges_to_single_run(videos, tmp_path, tiny_clip_dir, monkeypatch, capsys):
    single = read_samples(preprocess(videos, tmp_path / "one", options=options(tiny_clip_dir), mel=MEL))
    preprocess(videos, tmp_path / "two", options=options(tiny_clip_dir), mel=MEL, num_shards=2, shard_index=0)
    # the second part as a launcher (torchrun/accelerate) would start it: the split comes from the environment
    with monkeypatch.context() as env:  # undone before reading: webdataset splits by WORLD_SIZE too
        env.setenv("WORLD_SIZE", "2")
        env.setenv("RANK", "1")
        part = preprocess(videos, tmp_path / "two", options=options(tiny_clip_dir), mel=MEL)
    assert part.root == tmp_path / "two" / "part-00001-of-00002"
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["part-00000-of-00002", "part-00001-of-00002"]
    assert main(["-q", "preprocess", "--merge", str(tmp_path / "two")]) == 0
    out = capsys.readouterr().out
    assert "11 inputs → 9 clips" in out and "2 last clips zero-padded, 3 short tails dropped" in out
    merged = read_dataset_info(tmp_path / "two")
    assert not list((tmp_path / "two").glob("part-*"))
    assert merged.counts == read_dataset_info(tmp_path / "one").counts
    both = read_samples(read_dataset_info(tmp_path / "two"))
    assert sorted(both) == sorted(single)
    for key in single:
        assert np.array_equal(single[key]["mel.npy"], both[key]["mel.npy"])
        assert np.array_equal(single[key]["clip.npy"], both[key]["clip.npy"])
    key = lambda r: (r["path"], r["reason"])  # noqa: E731
    assert sorted(merged.rejected, key=key) == sorted(read_dataset_info(tmp_path / "one").rejected, key=key)


def test_shard_split_comes_from_the_launcher_environment_unless_given(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    assert _resolve_sharding(None, None) == (1, 0)  # no launcher: one part
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    assert _resolve_sharding(None, None) == (4, 3)
    assert _resolve_sharding(2, 1) == (2, 1)  # --num-shards/--shard-index win over the environment
    monkeypatch.setenv("RANK", "1")
    assert _resolve_sharding(2, None) == (2, 1)  # --num-shards alone under a launcher: each rank its part
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ClipsonicError, match=r"--shard-index 4 must be in \[0, --num-shards 4\)"):
        _resolve_sharding(None, None)


def test_audio_only_inputs_in_a_manifest_are_rejected_and_the_rest_written(tmp_path, tiny_clip_dir):
    media = tmp_path / "media"
    media.mkdir()
    write_video(media / "video.mp4", seconds=2.2, tone_hz=440.0)  # → 2 clips
    write_audio(media / "song.wav", seconds=2.2)
    write_audio(media / "song.mp4", seconds=2.2)  # an mp4 holding only AAC audio
    write_video(media / "other.mkv", seconds=1.2, tone_hz=660.0)  # → 1 clip
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("path,label\nmedia/video.mp4,dog\nmedia/song.wav,music\nmedia/song.mp4,music\nmedia/other.mkv,cat\n")
    info = preprocess(manifest, tmp_path / "ds", options=options(tiny_clip_dir, test_fraction=0.0), mel=MEL)
    assert info.counts == {"inputs": 4, "clips": 3, "rejected": 2, "silent_clips": 0, "padded_clips": 0,
                           "dropped_tails": 2}
    rejected = info.rejected
    assert sorted((Path(r["path"]).name, r["reason"]) for r in rejected) == [
        ("song.mp4", "no video stream"), ("song.wav", "no video stream")]
    samples = read_samples(info)
    assert sorted(Path(s["json"]["source"]).name for s in samples.values()) == ["other.mkv", "video.mp4", "video.mp4"]
    assert {s["json"]["label"] for s in samples.values()} == {"dog", "cat"}


def _cli(videos, out, clip_dir):
    return [sys.executable, "-m", "clipsonic", "-q", "preprocess", str(videos), "--out", str(out),
            "--clip-model", str(clip_dir), "--clip-seconds", "1.024", "--workers", "0", "--encode-group", "1",
            "--shard-size-mb", "0.000001", "--keep-audio", "--test-fraction", "0.3"]


def test_sigkill_then_resume_equals_uninterrupted(videos, tmp_path, tiny_clip_dir):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # the reference run goes through the API with the options the CLI flags spell out
    preprocess(videos, tmp_path / "ref", mel=MEL, options=options(
        tiny_clip_dir, encode_group=1, shard_size_mb=0.000001))
    proc = subprocess.Popen(_cli(videos, tmp_path / "run", tiny_clip_dir), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((tmp_path / "run").glob("*.tar"))) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "run" / "dataset.json").exists(), "the run finished before it could be killed"
    done = subprocess.run(_cli(videos, tmp_path / "run", tiny_clip_dir), env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    ref_files = sorted(p.name for p in (tmp_path / "ref").iterdir())
    assert ref_files == sorted(p.name for p in (tmp_path / "run").iterdir())  # no temporaries, no journal left
    for name in ref_files:
        if name != "dataset.json":
            assert (tmp_path / "ref" / name).read_bytes() == (tmp_path / "run" / name).read_bytes(), name
    ref, run = (json.loads((tmp_path / d / "dataset.json").read_text()) for d in ("ref", "run"))
    assert ref == run


def test_cli_errors_are_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "clipsonic", "preprocess", str(tmp_path / "none"), "--out", str(tmp_path / "o")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("clipsonic preprocess: error:") and "none" in r.stderr


# --- faults: two writers, orphaned workers, full disks, bad audio, paths from manifests -----------------------

HOLD_LOCK = ("import fcntl, os, sys, time\nfd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)\n"
             "fcntl.flock(fd, fcntl.LOCK_EX)\nprint('locked', flush=True)\ntime.sleep(60)\n")


@pytest.mark.parametrize("part", [False, True], ids=["dataset", "part"])
def test_second_writer_is_refused_with_the_holders_pid(videos, tmp_path, tiny_clip_dir, capsys, part):
    out = tmp_path / "ds"
    locked = out / "part-00000-of-00002" if part else out
    locked.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(locked)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        argv = _cli(videos, out, tiny_clip_dir)[3:] + (["--num-shards", "2", "--shard-index", "0"] if part else [])
        line = error_line(argv, capsys)
        assert f"{locked} is in use by another clipsonic process (pid {holder.pid})" in line
        assert not any(out.rglob("*.*")), "the refused run wrote something"
        if not part:
            line = error_line(["preprocess", "--merge", str(out)], capsys)
            assert f"pid {holder.pid}" in line
    finally:
        holder.kill()
        holder.wait()


def _children(pid: int) -> list[int]:
    """Live child processes of ``pid`` started by multiprocessing's spawn (the decoding workers)."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmd = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z" and b"spawn_main" in cmd:
            kids.append(int(stat.parent.name))
    return kids


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the workers through Linux's /proc")
def test_sigkill_leaves_no_decoder_workers(videos, tmp_path, tiny_clip_dir):
    argv = _cli(videos, tmp_path / "run", tiny_clip_dir)
    argv[argv.index("--workers") + 1] = "2"
    argv[argv.index("--encode-group") + 1] = "4"  # the pool starts a second worker only for a second queued item
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers, deadline = [], time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        workers = _children(proc.pid)
        if len(workers) == 2 and any((tmp_path / "run").glob("*.tar")):  # the workers have decoded something
            break
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    assert len(workers) == 2, f"did not see 2 working decoders before the run ended (saw {workers})"
    deadline = time.time() + 5
    while time.time() < deadline and any(map(_alive, workers)):
        time.sleep(0.05)
    orphans = [w for w in workers if _alive(w)]
    for pid in orphans:  # do not leave them running when the test fails
        os.kill(pid, signal.SIGKILL)
    assert not orphans, "decoder workers outlived their killed parent"


class _FullAfter(io.FileIO):
    """A file on a disk that fills up once ``budget[0]`` bytes have been written (by all such files)."""

    budget = [0]

    def write(self, data):
        if len(data) > self.budget[0]:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.budget[0] -= len(data)
        return super().write(data)


def _resume_after_full_disk(videos, out, tiny_clip_dir, capsys, fill):
    """Run until ``fill()`` makes the disk full: one line, no temporaries, committed shards kept; then resume."""
    line = error_line(_cli(videos, out, tiny_clip_dir)[3:], capsys)
    assert "No space left on device" in line and "free space on that disk" in line
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    committed = {p.name: p.read_bytes() for p in out.glob("*.tar")}
    assert committed and (out / ".progress.json").is_file()
    fill()
    assert main(_cli(videos, out, tiny_clip_dir)[3:]) == 0
    assert read_dataset_info(out).counts == COUNTS
    assert all((out / name).read_bytes() == data for name, data in committed.items()), "a committed shard changed"
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


def test_disk_full_during_a_shard_write_is_one_line_and_resumable(videos, tmp_path, tiny_clip_dir, capsys,
                                                                    monkeypatch):
    _FullAfter.budget[0] = 60_000  # a few shards, then the disk is full in the middle of one
    monkeypatch.setattr(dataset_module, "open", _FullAfter, raising=False)
    _resume_after_full_disk(videos, tmp_path / "ds", tiny_clip_dir, capsys,
                            lambda: monkeypatch.setattr(_FullAfter, "budget", [1 << 40]))


def test_disk_full_on_a_real_small_tmpfs(videos, tmp_path, tiny_clip_dir, capsys):
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        _resume_after_full_disk(videos, disk / "ds", tiny_clip_dir, capsys, lambda: subprocess.run(
            ["mount", "-o", "remount,size=16m", str(disk)], check=True))
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_nan_audio_is_a_logged_skip_and_the_rest_is_written(tmp_path, tiny_clip_dir, caplog):
    def nan_tone(t):
        x = 0.5 * np.sin(2 * np.pi * 440 * t)
        x[len(t) // 3:len(t) // 3 + 100] = np.nan
        return np.stack([x, x])

    (tmp_path / "v").mkdir()
    write_video(tmp_path / "v" / "nan.mkv", seconds=1.5, audio_codec="pcm_f32le", audio=nan_tone)
    write_video(tmp_path / "v" / "ok.mp4", seconds=1.5)
    with caplog.at_level("INFO", logger="clipsonic.data.preprocess"):
        info = preprocess(tmp_path / "v", tmp_path / "ds", options=options(tiny_clip_dir), mel=MEL)
    assert info.counts["clips"] == 1
    assert [(Path(r["path"]).name, r["reason"]) for r in info.rejected] == [
        ("nan.mkv", "the audio holds NaN or infinite samples (a corrupt float track)")]
    assert "nan.mkv: the audio holds NaN" in caplog.text


@pytest.mark.parametrize("split", ["/../../x", "../x", "a\nb", ".hidden", "a/b"])
def test_manifest_split_cannot_leave_the_output_folder(tmp_path, tiny_clip_dir, split):
    write_video(tmp_path / "v.mp4", seconds=1.5)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"path": "v.mp4"}) + "\n" + json.dumps({"path": "v.mp4", "start": 0.1,
                                                                          "split": split}) + "\n")
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(ClipsonicError, match=r"m.jsonl:2: split .* is not a plain name"):
        preprocess(manifest, tmp_path / "out" / "ds", options=options(tiny_clip_dir), mel=MEL)
    assert sorted(tmp_path.rglob("*")) == before


def test_no_clip_at_all_is_an_error_that_leaves_nothing(videos, tmp_path, tiny_clip_dir):
    with pytest.raises(ClipsonicError, match=r"no clip came out of its 6 video\(s\), all rejected \(first: .*bad"):
        preprocess(videos / "bad", tmp_path / "ds", options=options(tiny_clip_dir), mel=MEL)
    assert not (tmp_path / "ds").exists()
