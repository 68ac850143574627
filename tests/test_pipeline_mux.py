"""Muxing generated audio into a copy of a video: the video packets are copied byte for byte."""

from __future__ import annotations

import av
import numpy as np
import pytest
from support.media_files import write_audio, write_video

from clipsonic.errors import ClipsonicError
from clipsonic.mux import mux_audio, video_span


def _video_packets(path):
    with av.open(str(path)) as c:
        return [(bytes(p), p.pts) for p in c.demux(c.streams.video[0]) if p.size]


def _audio(path):
    with av.open(str(path)) as c:
        stream = c.streams.audio[0]
        frames = list(c.decode(stream))
        return stream.codec_context.name, stream.rate, sum(f.samples for f in frames) / stream.rate


@pytest.mark.parametrize("name, vcodec, acodec", [
    ("in.mp4", "libx264", "aac"),  # replaces the original sound track
    ("in.mkv", "libx264", None),  # Matroska leaves many packets without dts
    ("in.webm", "libvpx-vp9", None),
    ("in.mov", "libx264", None),
])
def test_video_stream_copied_and_audio_lasts_as_long_as_the_video(tmp_path, name, vcodec, acodec):
    src = write_video(tmp_path / name, seconds=1.6, fps=25, size=(32, 32), video_codec=vcodec,
                      audio_codec=acodec, sample_rate=48000)
    start, duration = video_span(src)
    assert duration == pytest.approx(1.6, abs=0.05)
    out = mux_audio(src, 0.3 * np.sin(np.arange(48000) / 5.0).astype(np.float32), 16000, tmp_path / f"out{src.suffix}")
    assert _video_packets(out) == _video_packets(src)
    codec, rate, seconds = _audio(out)
    assert codec in ("aac", "opus") and seconds == pytest.approx(duration, abs=0.07)  # one codec frame
    with av.open(str(out)) as c:
        assert len(c.streams.audio) == 1 and len(c.streams.video) == 1


def test_short_audio_is_padded_and_failures_leave_nothing(tmp_path):
    src = write_video(tmp_path / "v.mp4", seconds=1.0, size=(32, 32), audio_codec=None)
    out = mux_audio(src, np.zeros(1000, np.float32), 16000, tmp_path / "o.mp4")
    assert _audio(out)[2] == pytest.approx(1.0, abs=0.07)
    with pytest.raises(ClipsonicError, match="extension"):
        mux_audio(src, np.zeros(100, np.float32), 16000, tmp_path / "o.gif")
    with pytest.raises(ClipsonicError, match=r"\.webm"):
        mux_audio(src, np.zeros(1600, np.float32), 16000, tmp_path / "o.webm")  # H.264 cannot go into WebM
    with pytest.raises(ClipsonicError, match="no video stream"):
        mux_audio(write_audio(tmp_path / "a.wav", seconds=0.5), np.zeros(100, np.float32), 16000, tmp_path / "x.mp4")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.wav", "o.mp4", "v.mp4"]
