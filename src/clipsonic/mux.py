"""Put generated audio into a copy of a video: the video stream is copied, never re-encoded.

``mux_audio(video, audio, sample_rate, out)`` demuxes the first video stream of ``video`` and
writes its packets unchanged into ``out`` beside one new audio track encoded from ``audio``.
Other streams of the input (its original sound, subtitles) are left out. The audio is cut or
padded with silence to the video stream's duration and starts at its first timestamp, so
picture and sound line up. The file is written under a temporary name and renamed when
complete: ``out`` is either the whole result or untouched.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import numpy as np

from clipsonic.errors import ClipsonicError
from clipsonic.files import atomic_output

# Output container by extension → (FFmpeg format, audio encoder). AAC where the container is
# usually played by browsers and phones; Opus is WebM's only common choice.
CONTAINERS: dict[str, tuple[str, str]] = {
    ".mp4": ("mp4", "aac"),
    ".m4v": ("mp4", "aac"),
    ".mov": ("mov", "aac"),
    ".mkv": ("matroska", "aac"),
    ".webm": ("webm", "libopus"),
    ".avi": ("avi", "libmp3lame"),
    ".ts": ("mpegts", "aac"),
}
# Opus only takes these rates; other rates are resampled to 48 kHz by PyAV's encoder front end.
_OPUS_RATES = (8000, 12000, 16000, 24000, 48000)


class MuxError(ClipsonicError):
    """The video cannot be read, has no video stream, or cannot be copied into the output."""


def video_span(path: str | os.PathLike) -> tuple[float, float]:
    """``(start, duration)`` in seconds of the first video stream, from its packets (no decoding)."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise MuxError(f"{path}: no video stream to copy")
            stream = container.streams.video[0]
            first, end = None, None
            for packet in container.demux(stream):
                if packet.pts is None:
                    continue
                t0 = packet.pts * packet.time_base
                t1 = t0 + (packet.duration or 0) * packet.time_base
                first = t0 if first is None else min(first, t0)
                end = t1 if end is None else max(end, t1)
    except av.error.FFmpegError as exc:
        raise MuxError(f"{path}: cannot read the video ({exc})") from None
    if first is None:
        raise MuxError(f"{path}: the video stream has no frames")
    return float(first), float(end - first)


def mux_audio(video: str | os.PathLike, audio: np.ndarray, sample_rate: int, out: str | os.PathLike) -> Path:
    """Write ``out``: the first video stream of ``video`` (copied) + ``audio`` as its sound.

    Args:
        video: any video file PyAV reads.
        audio: float32 ``[samples]`` mono waveform in [-1, 1] (louder samples are clipped).
        sample_rate: of ``audio``, e.g. 16000.
        out: the new file; its extension picks the container (see :data:`CONTAINERS`). The
            video codec must be storable in it (H.264 cannot go into .webm: keep the input's
            extension when unsure).
    Returns:
        ``Path(out)``.
    """
    import av

    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in CONTAINERS:
        raise MuxError(f"{out}: cannot write a video with extension {out.suffix!r}; use one of {sorted(CONTAINERS)}")
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1 or audio.size == 0:
        raise MuxError(f"expected a mono waveform [samples], got shape {list(audio.shape)}")
    start, duration = video_span(video)
    n = int(round(duration * sample_rate))
    audio = np.clip(np.pad(audio[:n], (0, max(0, n - audio.size))), -1.0, 1.0)
    fmt, codec = CONTAINERS[suffix]
    try:
        with atomic_output(out) as tmp:
            _remux(video, audio, sample_rate, start, tmp, fmt, codec)
    except (av.error.FFmpegError, ValueError) as exc:  # PyAV refuses some codec/container pairs with ValueError
        raise MuxError(f"cannot copy the video of {video} into {out} ({exc}); a container that "
                       f"stores its codec (often the input's own extension) avoids this") from None
    return out


def _remux(video, audio: np.ndarray, sample_rate: int, start: float, tmp: Path, fmt: str, codec: str) -> None:
    """Copy video packets and interleave the encoded audio packets by time."""
    import av

    with av.open(str(video)) as src, av.open(str(tmp), "w", format=fmt) as dst:
        v_in = src.streams.video[0]
        v_out = dst.add_stream_from_template(v_in)
        rate = sample_rate if codec != "libopus" or sample_rate in _OPUS_RATES else 48000
        a_out = dst.add_stream(codec, rate=rate)
        a_out.layout = "mono"
        pending = _encode(a_out, audio, sample_rate, start)  # [(seconds, packet)], in order
        t = start
        for packet in src.demux(v_in):
            if packet.size == 0:  # the demuxer's end-of-stream marker
                continue
            stamp = packet.dts if packet.dts is not None else packet.pts  # Matroska omits many dts
            if stamp is not None:
                t = float(stamp * packet.time_base)
            while pending and pending[0][0] <= t:
                dst.mux(pending.pop(0)[1])
            packet.stream = v_out
            dst.mux(packet)
        for _, packet in pending:
            dst.mux(packet)


def _encode(stream, audio: np.ndarray, sample_rate: int, start: float, block: int = 4096) -> list:
    """Encode ``audio`` [N] into packets stamped from ``start`` seconds; PyAV re-frames and resamples."""
    import av

    offset = int(round(start * sample_rate))
    packets = []
    for s in range(0, audio.size, block):
        frame = av.AudioFrame.from_ndarray(audio[None, s:s + block].copy(), format="fltp", layout="mono")
        frame.sample_rate = sample_rate
        frame.pts = offset + s
        frame.time_base = Fraction(1, sample_rate)
        packets.extend(stream.encode(frame))
    packets.extend(stream.encode(None))
    return [(float((p.dts if p.dts is not None else p.pts) * p.time_base), p) for p in packets]
