"""clipsonic.media on real files written by PyAV (tests/support/media_files.py): no mocks.

Containers and codecs, the shared timeline, pictures (load_frames) and bad input; the sound
(load_audio's rates, channels and offsets, and save_audio) is tested in test_media_audio.py.
"""

from __future__ import annotations

import logging
from fractions import Fraction

import av
import numpy as np
import pytest
from PIL import Image
from support.media_files import (
    AMPLITUDE,
    PALETTE,
    VIDEOS,
    amplitude_at,
    clicks_at,
    close_colour,
    frame_times,
    onset,
    peak_hz,
    second_colour,
    truncate,
    video_cache,
    write_audio,
    write_video,
)

from clipsonic import media
from clipsonic.errors import ClipsonicError
from clipsonic.media import MediaError, MediaInfo, load_audio, load_frames, probe

SR = 16000
CODEC_IDS = {"libx264": "h264", "libvpx-vp9": "vp9", "mpeg4": "mpeg4", "aac": "aac", "libopus": "opus",
             "flac": "flac", "libmp3lame": "mp3", "pcm_s16le": "pcm_s16le"}


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """``video(name)``: a 2-s file of VIDEOS (or a custom one: ``video(name, **kwargs)``), written once."""
    return video_cache(tmp_path_factory.mktemp("media"))


# --- each container and codec -----------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(VIDEOS))
def test_probe_each_container(video, name):
    spec = VIDEOS[name]
    info = probe(video(name))
    assert isinstance(info, MediaInfo)
    assert info.path == str(video(name))
    assert info.has_audio and info.has_video
    assert info.duration == pytest.approx(2.0, abs=0.06)
    assert (info.video_width, info.video_height, info.video_fps) == (64, 48, 25.0)
    assert info.video_codec == CODEC_IDS[spec["video_codec"]]
    assert info.audio_codec == CODEC_IDS[spec["audio_codec"]]
    assert (info.audio_sample_rate, info.audio_channels) == (spec["sample_rate"], spec["channels"])


@pytest.mark.parametrize("name", sorted(VIDEOS))
def test_load_audio_each_container(video, name):
    x = load_audio(video(name), sample_rate=SR, start=0.25, duration=1.5)
    assert x.dtype == np.float32 and x.shape == (24000,)
    assert peak_hz(x, SR) == pytest.approx(440.0, abs=0.5)
    assert amplitude_at(x, SR, 440.0) == pytest.approx(AMPLITUDE, rel=0.1)


@pytest.mark.parametrize("name", sorted(VIDEOS))
def test_load_frames_each_container(video, name):
    times = [1.5, 0.3, 1.96, 0.0]
    pictures = load_frames(video(name), times)
    assert [p.shape for p in pictures] == [(48, 64, 3)] * 4 and all(p.dtype == np.uint8 for p in pictures)
    for t, p in zip(times, pictures, strict=True):
        assert close_colour(p, second_colour(t)), (t, p[0, 0])


@pytest.mark.parametrize(
    "name, kwargs",
    [("a.wav", dict(sample_rate=8000)), ("a.flac", dict(sample_rate=22050, channels=2)),
     ("a.mp3", dict(sample_rate=22050)), ("a.ogg", dict(sample_rate=48000)),
     ("b.flac", dict(sample_rate=44100)), ("b.ogg", dict(sample_rate=44100, codec="flac"))],
)
def test_audio_only_files(tmp_path, name, kwargs):
    path = write_audio(tmp_path / name, seconds=1.5, tone_hz=440.0, **kwargs)
    info = probe(path)
    assert info.has_audio and not info.has_video and info.video_codec is None
    assert info.audio_sample_rate == kwargs["sample_rate"]
    assert info.duration == pytest.approx(1.5, abs=0.03)
    x = load_audio(path, sample_rate=SR)
    assert abs(len(x) - 1.5 * SR) <= 0.03 * SR
    assert peak_hz(x[800:-800], SR) == pytest.approx(440.0, abs=0.5)
    with pytest.raises(MediaError, match="no video stream"):
        load_frames(path, [0.5])


# --- the shared timeline ----------------------------------------------------------------------

def test_audio_that_starts_late_is_preceded_by_silence(video):
    path = video("late.mkv", audio_start=0.5)
    assert av.open(str(path)).streams.audio[0].start_time > 0  # the file really has a late start
    x = load_audio(path, sample_rate=SR)
    assert np.abs(x[: int(0.49 * SR)]).max() < 1e-3
    assert onset(x, SR) == pytest.approx(0.5, abs=0.003)
    assert close_colour(load_frames(path, [0.2])[0], second_colour(0.2))


def test_file_timeline_starts_at_container_start(video):
    """MPEG-TS stamps start near 0.06 s, not 0: times count from the file's start for both tracks."""
    path = video("clicks.ts", channels=1, audio=clicks_at(1.0))
    assert av.open(str(path)).start_time > 0
    x = load_audio(path, sample_rate=SR)
    # AAC in TS keeps its 1024-sample encoder delay (no edit list): 21 ms late at most.
    assert np.argmax(np.abs(x)) / SR == pytest.approx(1.0, abs=0.03)
    before, after = load_frames(path, [0.95, 1.1])
    assert close_colour(before, PALETTE[0]) and close_colour(after, PALETTE[1])


def test_duration_without_container_duration(video):
    path = video("live.webm", video_codec="libvpx-vp9", audio_codec="libopus", sample_rate=48000, streamable=True)
    assert av.open(str(path)).duration is None  # nothing in the header: probe must measure
    assert probe(path).duration == pytest.approx(2.0, abs=0.03)
    assert len(load_audio(path, sample_rate=SR)) == pytest.approx(2 * SR, abs=0.03 * SR)


# --- frames: accurate seeking -----------------------------------------------------------------

def test_accurate_seek_with_one_keyframe(video, monkeypatch, caplog):
    path = video("gop250.mp4", seconds=3, gop=250)
    container = av.open(str(path))
    keyframes = [p.pts for p in container.demux(video=0) if p.is_keyframe and p.pts is not None]
    assert len(keyframes) == 1  # only the first frame: every other frame needs decoding forward
    times = [2.5, 0.5, 1.5, 2.0, 1.999, 2.96]
    monkeypatch.setattr(media.frames, "FRAME_SEEK_GAP_S", 0.0)
    with caplog.at_level(logging.DEBUG, logger="clipsonic.media"):
        pictures = load_frames(path, times)
    assert "seeking" not in caplog.text  # the index shows no keyframe ahead: one decoding pass
    for t, p in zip(times, pictures, strict=True):
        assert close_colour(p, second_colour(t)), (t, p[0, 0])
    for t in times:  # each call seeks (back to the one keyframe) and decodes forward
        assert close_colour(load_frames(path, [t])[0], second_colour(t)), t


def test_seek_lands_between_keyframes(video, monkeypatch, caplog):
    path = video("gop25.mp4", seconds=6, gop=25)
    monkeypatch.setattr(media.frames, "FRAME_SEEK_GAP_S", 0.5)
    times = [5.5, 0.1, 3.2, 3.7, 3.99, 2.3]
    with caplog.at_level(logging.DEBUG, logger="clipsonic.media"):
        pictures = load_frames(path, times)
    assert caplog.text.count("seeking to the keyframe") == 3  # to 2.3, 3.2 and 5.5 s; 3.7 and 3.99 decode on
    assert "decoding from the start" not in caplog.text
    for t, p in zip(times, pictures, strict=True):
        assert close_colour(p, second_colour(t)), (t, p[0, 0])
    # A fresh call just before a keyframe: the seek must land on the keyframe before (3.0 s),
    # not on the one shown at 4.0 s (the index holds decoding times, 2 frames early here).
    assert close_colour(load_frames(path, [3.99])[0], PALETTE[3])


def test_variable_frame_rate(video):
    times = frame_times(2, 20, vfr=True)
    index = {float(t): k for k, t in enumerate(times)}
    path = video("vfr.mp4", fps=20, vfr=True, colour=lambda t: PALETTE[index[t] % len(PALETTE)])
    assert probe(path).video_fps == pytest.approx(len(times) / 1.975, rel=0.02)
    ends = times[1:] + [times[-1] + Fraction(3, 40)]
    asked = [float(t) for t in times] + [float((a + b) / 2) for a, b in zip(times, ends, strict=True)]
    expected = list(range(len(times))) * 2
    for k, p in zip(expected, load_frames(path, asked), strict=True):
        assert close_colour(p, PALETTE[k % len(PALETTE)], tol=24), (k, p[0, 0])


def test_pictures_keep_their_layout(video):
    """Not only solid colours: a left/right split must come back unmirrored and upright."""
    def picture(t):
        image = np.zeros((48, 64, 3), np.uint8)
        image[:, :32] = PALETTE[0]
        image[:24, 32:] = PALETTE[1]
        image[24:, 32:] = PALETTE[2]
        return image

    got = load_frames(video("split.mp4", picture=picture), [1.0])[0]
    assert close_colour(got[20:28, 4:28], PALETTE[0], tol=24)
    assert close_colour(got[4:20, 36:60], PALETTE[1], tol=24)
    assert close_colour(got[28:44, 36:60], PALETTE[2], tol=24)


def test_order_and_duplicates(video):
    pictures = load_frames(video("h264_aac.mp4"), [1.2, 0.2, 1.2])
    assert close_colour(pictures[0], PALETTE[1]) and close_colour(pictures[1], PALETTE[0])
    np.testing.assert_array_equal(pictures[0], pictures[2])
    assert pictures[0] is not pictures[2]
    assert load_frames(video("h264_aac.mp4"), []) == []


# --- bad input ----------------------------------------------------------------------------------

def test_bad_files(tmp_path, video):
    text = tmp_path / "notes.mp4"
    text.write_text("these are not the frames you are looking for\n" * 20)
    empty = tmp_path / "empty.mp4"
    empty.touch()
    cut = truncate(write_video(tmp_path / "cut.mp4", seconds=2), 0.5)  # index at the end: lost
    cases = {tmp_path / "missing.mp4": "not found", empty: "empty", cut: "not a readable media file",
             text: "not a readable media file|no audio stream|no video stream", tmp_path: "not a regular file"}
    for path, problem in cases.items():
        for call in (lambda p: probe(p), lambda p: load_audio(p), lambda p: load_frames(p, [0.5])):
            with pytest.raises(MediaError, match=problem) as err:
                call(path)
            assert str(path) in str(err.value)
            assert isinstance(err.value, ClipsonicError)


def test_truncated_file_with_index_first(tmp_path):
    """The header promises 2 s but the data stops half-way: what is there reads, the rest is an error."""
    path = truncate(write_video(tmp_path / "fast.mp4", seconds=2, faststart=True), 0.5)
    assert probe(path).duration == pytest.approx(2.0, abs=0.05)
    assert peak_hz(load_audio(path, sample_rate=SR, start=0.1, duration=0.5), SR) == pytest.approx(440, abs=1)
    assert close_colour(load_frames(path, [0.2])[0], PALETTE[0])
    with pytest.raises(MediaError, match="truncated or corrupt|runs past the end") as err:
        load_audio(path, sample_rate=SR, start=0.0, duration=2.0)
    assert str(path) in str(err.value)
    with pytest.raises(MediaError, match="truncated or corrupt|beyond the end of the video"):
        load_frames(path, [1.95])


def test_missing_streams(video, tmp_path):
    silent = video("silent.mp4", audio_codec=None)
    assert not probe(silent).has_audio
    with pytest.raises(MediaError, match=f"{silent}: no audio stream"):
        load_audio(silent)
    with pytest.raises(MediaError, match="no video stream"):
        load_frames(write_audio(tmp_path / "s.wav", seconds=0.5, sample_rate=8000), [0.1])


@pytest.mark.parametrize("times, problem", [([2.0], "beyond the end"), ([0.5, 7.0], "beyond the end"),
                                            ([-0.1], ">= 0"), ([float("nan")], ">= 0"), (["x"], ">= 0")])
def test_bad_frame_times(video, times, problem):
    with pytest.raises(MediaError, match=problem):
        load_frames(video("h264_aac.mp4"), times)


@pytest.mark.parametrize("name, fmt", [("still.png", "PNG"), ("still.jpg", "JPEG"), ("png_named.mp4", "PNG")])
def test_a_still_image_is_no_video(tmp_path, name, fmt):
    path = tmp_path / name
    Image.new("RGB", (32, 32), (200, 30, 30)).save(path, format=fmt)
    for call in (lambda p: probe(p), lambda p: load_audio(p), lambda p: load_frames(p, [0.0])):
        with pytest.raises(MediaError, match=rf"{path}: a still image \(\w+\), not a video or sound file"):
            call(path)
