"""clipsonic.media's sound on real files written by PyAV: load_audio's rates, channels, offsets and
seeking, and save_audio."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import soundfile
import torch
from support.media_files import AMPLITUDE, VIDEOS, amplitude_at, clicks_at, onset, peak_hz, video_cache, write_audio

from clipsonic import media
from clipsonic.media import MediaError, load_audio, probe, save_audio

SR = 16000


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """``video(name)``: a 2-s file of VIDEOS (or a custom one: ``video(name, **kwargs)``), written once."""
    return video_cache(tmp_path_factory.mktemp("media"))


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


@pytest.mark.parametrize("ext", [".wav", ".flac"])
def test_exact_offset_of_a_click(tmp_path, ext):
    path = write_audio(tmp_path / f"click{ext}", seconds=2, sample_rate=48000, audio=clicks_at(1.2345))
    whole = load_audio(path, sample_rate=SR)
    assert abs(int(np.argmax(np.abs(whole))) - round(1.2345 * SR)) <= 1
    part = load_audio(path, sample_rate=SR, start=0.7, duration=1.0)
    assert part.shape == (SR,)
    assert abs(int(np.argmax(np.abs(part))) - round(0.5345 * SR)) <= 1


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


def test_end_tolerance_pads_only_a_little_unless_asked(tmp_path):
    path = write_audio(tmp_path / "one.wav", seconds=1.0, sample_rate=16000)
    x = load_audio(path, sample_rate=SR, start=0.5, duration=0.52)
    assert x.shape == (8320,) and np.all(x[8000:] == 0) and np.abs(x[:8000]).max() > 0.4
    with pytest.raises(MediaError, match="runs past the end"):
        load_audio(path, sample_rate=SR, start=0.5, duration=0.6)
    padded = load_audio(path, sample_rate=SR, start=0.5, duration=0.6, pad_end=True)  # e.g. a short training clip
    assert padded.shape == (9600,) and np.array_equal(padded[:8320], x) and np.all(padded[8000:] == 0)


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
