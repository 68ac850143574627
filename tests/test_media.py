"""clipsonic.media on real files written by PyAV (tests/support/media_files.py): no mocks."""

from __future__ import annotations

import logging
from fractions import Fraction

import av
import numpy as np
import pytest
import soundfile
import torch
from support.media_files import (
    AMPLITUDE,
    PALETTE,
    frame_times,
    second_colour,
    truncate,
    write_audio,
    write_video,
)

from clipsonic import media
from clipsonic.errors import ClipsonicError
from clipsonic.media import MediaError, MediaInfo, load_audio, load_frames, probe, save_audio

SR = 16000

# name → (writer kwargs, expected probe fields): each container with its usual codecs.
VIDEOS = {
    "h264_aac.mp4": dict(video_codec="libx264", audio_codec="aac", sample_rate=44100, channels=2),
    "vp9_opus.webm": dict(video_codec="libvpx-vp9", audio_codec="libopus", sample_rate=48000, channels=2),
    "h264_flac.mkv": dict(video_codec="libx264", audio_codec="flac", sample_rate=22050, channels=1),
    "mpeg4_mp3.avi": dict(video_codec="mpeg4", audio_codec="libmp3lame", sample_rate=44100, channels=2),
    "h264_pcm.mov": dict(video_codec="libx264", audio_codec="pcm_s16le", sample_rate=48000, channels=2),
}
CODEC_IDS = {"libx264": "h264", "libvpx-vp9": "vp9", "mpeg4": "mpeg4", "aac": "aac", "libopus": "opus",
             "flac": "flac", "libmp3lame": "mp3", "pcm_s16le": "pcm_s16le"}


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """``video(name)``: a 2-s file of VIDEOS (or a custom one: ``video(name, **kwargs)``), written once."""
    root = tmp_path_factory.mktemp("media")
    made = {}

    def get(name: str, **kwargs):
        if name not in made:
            made[name] = write_video(root / name, **{"seconds": 2, **VIDEOS.get(name, {}), **kwargs})
        return made[name]

    return get


def peak_hz(x: np.ndarray, rate: int) -> float:
    """Frequency of the strongest spectral peak, refined by parabolic interpolation."""
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    k = int(np.argmax(spec[1:-1])) + 1
    a, b, c = np.log(spec[k - 1:k + 2] + 1e-12)
    return (k + 0.5 * (a - c) / (a - 2 * b + c)) * rate / len(x)


def amplitude_at(x: np.ndarray, rate: int, hz: float) -> float:
    """Amplitude of the sine at ``hz`` (Hann-windowed DFT, exact for whole-bin frequencies)."""
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    k = int(round(hz * len(x) / rate))
    return float(spec[k - 1:k + 2].max() / (np.hanning(len(x)).sum() / 2))


def close_colour(picture: np.ndarray, rgb, tol: int = 16) -> bool:
    return bool(np.abs(picture.astype(int) - np.array(rgb)).max() <= tol)


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


# --- sound: rate, pitch, channels, offsets ----------------------------------------------------

@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_resampled_length_and_pitch(tmp_path, rate):
    path = write_audio(tmp_path / "t.wav", seconds=2, sample_rate=rate, tone_hz=440.0)
    x = load_audio(path, sample_rate=SR)
    assert x.shape == (2 * SR,)
    assert peak_hz(x, SR) == pytest.approx(440.0, abs=0.1)
    assert amplitude_at(x, SR, 440.0) == pytest.approx(AMPLITUDE, rel=0.01)


def test_resampling_is_high_quality(tmp_path):
    """48k → 16k keeps a 7 kHz tone at full level and removes a 9 kHz one (no alias at 7 kHz)."""
    inband = load_audio(write_audio(tmp_path / "a.wav", seconds=1, sample_rate=48000, tone_hz=7000.0))
    alias = load_audio(write_audio(tmp_path / "b.wav", seconds=1, sample_rate=48000, tone_hz=9000.0))
    assert amplitude_at(inband, SR, 7000.0) == pytest.approx(AMPLITUDE, rel=0.01)
    # Away from the file's edges (where the tone switches on and off): below -80 dB.
    assert np.abs(alias[800:-800]).max() < 1e-4 * AMPLITUDE


def test_native_rate_is_untouched_and_51_is_averaged(tmp_path):
    freqs = [200.0, 300.0, 500.0, 700.0, 1100.0, 1300.0]
    path = write_audio(tmp_path / "six.wav", seconds=1, sample_rate=48000, channels=6, tone_hz=freqs)
    x = load_audio(path, sample_rate=48000)
    written = soundfile.read(path, dtype="float32")[0]  # [N, 6], the exact int16 values
    assert probe(path).audio_channels == 6
    np.testing.assert_allclose(x, written.mean(axis=1), atol=1e-6)


def test_51_aac_downmix_keeps_every_channel(video):
    freqs = [300.0, 400.0, 500.0, 80.0, 700.0, 800.0]  # FL FR FC LFE BL BR: AAC low-passes the LFE
    path = video("six.mp4", channels=6, tone_hz=freqs)
    assert probe(path).audio_channels == 6
    x = load_audio(path, sample_rate=SR, start=0.0, duration=2.0)
    for f in freqs:
        assert amplitude_at(x, SR, f) == pytest.approx(AMPLITUDE / 6, rel=0.15), f


def test_stereo_is_averaged(tmp_path):
    both = load_audio(write_audio(tmp_path / "lr.flac", seconds=1, sample_rate=44100, channels=2,
                                  tone_hz=[440.0, 660.0]))
    assert amplitude_at(both, SR, 440.0) == pytest.approx(AMPLITUDE / 2, rel=0.02)
    assert amplitude_at(both, SR, 660.0) == pytest.approx(AMPLITUDE / 2, rel=0.02)

    def opposite(t):
        s = AMPLITUDE * np.sin(2 * np.pi * 440 * t)
        return np.stack([s, -s])

    cancelled = load_audio(write_audio(tmp_path / "inv.flac", seconds=1, sample_rate=44100, channels=2, audio=opposite))
    assert np.abs(cancelled).max() < 1e-4


def clicks_at(*seconds: float):
    def audio(t):
        x = np.zeros_like(t)
        rate = round(1 / (t[1] - t[0]))
        for s in seconds:
            x[round(s * rate)] = 0.9
        return x
    return audio


@pytest.mark.parametrize("ext", [".wav", ".flac"])
def test_exact_offset_of_a_click(tmp_path, ext):
    path = write_audio(tmp_path / f"click{ext}", seconds=2, sample_rate=48000, audio=clicks_at(1.2345))
    whole = load_audio(path, sample_rate=SR)
    assert abs(int(np.argmax(np.abs(whole))) - round(1.2345 * SR)) <= 1
    part = load_audio(path, sample_rate=SR, start=0.7, duration=1.0)
    assert part.shape == (SR,)
    assert abs(int(np.argmax(np.abs(part))) - round(0.5345 * SR)) <= 1


def onset(x: np.ndarray, rate: int) -> float:
    """Seconds at which a silent signal first reaches 20% of full tone level."""
    return int(np.argmax(np.abs(x) > 0.2 * AMPLITUDE)) / rate


@pytest.mark.parametrize("name", ["h264_aac.mp4", "vp9_opus.webm", "h264_pcm.mov"])
def test_offset_of_a_tone_onset_in_lossy_files(video, name):
    def gated(t):
        return np.where(t >= 1.3, AMPLITUDE * np.sin(2 * np.pi * 1000 * t), 0.0)

    path = video("onset_" + name, **{**VIDEOS[name], "audio": gated, "channels": 1})
    assert onset(load_audio(path, sample_rate=SR), SR) == pytest.approx(1.3, abs=0.003)
    assert onset(load_audio(path, sample_rate=SR, start=0.8, duration=1.0), SR) == pytest.approx(0.5, abs=0.003)


@pytest.mark.parametrize("name", ["h264_aac.mp4", "vp9_opus.webm", "mpeg4_mp3.avi", "h264_flac.mkv"])
def test_segments_match_the_whole_decode(video, name):
    whole = load_audio(video(name), sample_rate=SR)
    for start, duration in [(0.0, 0.5), (0.3333, 1.2), (1.01, 0.9)]:
        part = load_audio(video(name), sample_rate=SR, start=start, duration=duration)
        i = round(start * SR)
        np.testing.assert_allclose(part, whole[i:i + len(part)], atol=2e-4)


@pytest.mark.parametrize("name, max_shift", [("h264_aac.mp4", 0), ("mpeg4_mp3.avi", 0), ("a.ogg", 0), ("a.wav", 0),
                                             ("a.flac", 0), ("vp9_opus.webm", 1e-3), ("h264_flac.mkv", 1e-3)])
def test_seeking_gives_the_same_audio(video, tmp_path, monkeypatch, caplog, name, max_shift):
    """Starts beyond AUDIO_SEEK_MIN_S seek; lowered to 0 here, the result must not move.

    Matroska/WebM store milliseconds, so a seek there may land up to 1 ms off. Lossless files
    must decode identically; lossy decoders may differ a little after a seek (AAC's noise
    substitution draws random numbers), so there the two decodes need only line up.
    """
    def noise(t):  # broadband, so the lag between two decodes is unambiguous
        return 0.3 * np.random.default_rng(0).uniform(-1, 1, len(t))

    path = (write_audio(tmp_path / name, seconds=3, sample_rate=48000, audio=noise) if name.startswith("a.")
            else video("long_" + name, **{**VIDEOS[name], "seconds": 3.5, "channels": 1, "audio": noise}))
    decoded = load_audio(path, sample_rate=SR, start=2.2, duration=0.6)
    monkeypatch.setattr(media.audio, "AUDIO_SEEK_MIN_S", 0.0)
    with caplog.at_level(logging.DEBUG, logger="clipsonic.media"):
        seeked = load_audio(path, sample_rate=SR, start=2.2, duration=0.6)
    assert "decoding from the start" not in caplog.text  # the seek was used, not the fallback
    assert seeked.shape == decoded.shape
    lags = np.arange(-40, 41)
    corr = [np.dot(seeked[50:-50], np.roll(decoded, lag)[50:-50]) for lag in lags]
    assert abs(lags[int(np.argmax(corr))]) <= max_shift * SR + 0.5
    assert max(corr) / np.dot(decoded[50:-50], decoded[50:-50]) > 0.6  # the same sound, not another stretch
    if name.endswith((".wav", ".flac")):
        np.testing.assert_allclose(seeked, decoded, atol=2e-4)


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


def test_end_tolerance_pads_only_a_little_unless_asked(tmp_path):
    path = write_audio(tmp_path / "one.wav", seconds=1.0, sample_rate=16000)
    x = load_audio(path, sample_rate=SR, start=0.5, duration=0.52)
    assert x.shape == (8320,) and np.all(x[8000:] == 0) and np.abs(x[:8000]).max() > 0.4
    with pytest.raises(MediaError, match="runs past the end"):
        load_audio(path, sample_rate=SR, start=0.5, duration=0.6)
    padded = load_audio(path, sample_rate=SR, start=0.5, duration=0.6, pad_end=True)  # e.g. a short training clip
    assert padded.shape == (9600,) and np.array_equal(padded[:8320], x) and np.all(padded[8000:] == 0)


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


@pytest.mark.parametrize("kwargs, problem", [
    (dict(sample_rate=0), "sample_rate"), (dict(sample_rate=-16000), "sample_rate"),
    (dict(sample_rate=16000.5), "sample_rate"), (dict(start=5.0), "beyond the end"),
    (dict(start=2.5), "beyond the end"), (dict(start=-1.0), ">= 0"),
    (dict(start=1.5, duration=1.0), "runs past the end"), (dict(duration=0.0), "> 0"),
])
def test_bad_audio_requests(video, kwargs, problem):
    path = video("h264_aac.mp4")
    with pytest.raises(MediaError, match=problem) as err:
        load_audio(path, **kwargs)
    assert str(path) in str(err.value)


# --- writing ------------------------------------------------------------------------------------

@pytest.mark.parametrize("ext", [".wav", ".flac"])
def test_save_audio_round_trip(tmp_path, ext):
    t = np.arange(8000) / 8000
    mono = (0.5 * np.sin(2 * np.pi * 300 * t)).astype(np.float32)
    save_audio(tmp_path / f"m{ext}", mono, 8000)
    back, rate = soundfile.read(tmp_path / f"m{ext}", dtype="float32")
    assert rate == 8000 and back.shape == (8000,)
    np.testing.assert_allclose(back, mono, atol=1 / 32768 + 1e-7)
    stereo = torch.from_numpy(np.stack([mono, -mono]))
    save_audio(tmp_path / "out" / f"s{ext}", stereo, 8000)
    back, _ = soundfile.read(tmp_path / "out" / f"s{ext}", dtype="float32")
    assert back.shape == (8000, 2)
    np.testing.assert_allclose(back.T, stereo.numpy(), atol=1 / 32768 + 1e-7)
    np.testing.assert_allclose(load_audio(tmp_path / f"m{ext}", sample_rate=8000), mono, atol=1 / 32768 + 1e-7)
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == sorted([f"m{ext}", f"s{ext}"])


def test_save_audio_peak_limits_with_a_warning(tmp_path, caplog):
    x = np.array([0.0, 0.5, -2.0, 1.0], np.float32)
    with caplog.at_level(logging.WARNING, logger="clipsonic.media"):
        save_audio(tmp_path / "loud.wav", x, 16000)
    assert "beyond [-1, 1]" in caplog.text and "loud.wav" in caplog.text
    back, _ = soundfile.read(tmp_path / "loud.wav", dtype="float32")
    np.testing.assert_allclose(back, x / 2.0, atol=1 / 32768)  # scaled, not clipped: 1.0 stays 0.5
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="clipsonic.media"):
        save_audio(tmp_path / "ok.wav", x / 2, 16000)
    assert caplog.text == ""


def test_save_audio_is_atomic_and_rejects_bad_input(tmp_path):
    target = tmp_path / "keep.flac"
    save_audio(target, np.zeros(100, np.float32), 16000)
    before = target.read_bytes()
    bad = [(np.array([0.0, np.nan], np.float32), 16000, "NaN"),
           (np.zeros((100, 2), np.float32), 16000, "channels"),
           (np.zeros(100, np.int16), 16000, "float"),
           (np.zeros(100, np.float32), 0, "sample_rate"),
           (np.zeros(100, np.float32), 2_000_000, "writing FLAC failed")]  # libsndfile refuses mid-write
    for audio, rate, problem in bad:
        with pytest.raises(MediaError, match=problem):
            save_audio(target, audio, rate)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["keep.flac"]  # no temporary files left
    with pytest.raises(MediaError, match="use .wav or .flac"):
        save_audio(tmp_path / "x.mp3", np.zeros(10, np.float32), 16000)


def test_saved_files_get_normal_permissions(tmp_path):
    import os
    import stat

    mask = os.umask(0o022)
    try:
        save_audio(tmp_path / "a.wav", np.zeros(160, np.float32), 16000)
    finally:
        os.umask(mask)
    assert stat.S_IMODE((tmp_path / "a.wav").stat().st_mode) == 0o644
