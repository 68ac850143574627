"""Put generated audio into a copy of a video: the first video stream copied, never re-encoded, and the new
sound, cut or padded to the video stream's span, as the only audio track (other streams are left out).
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from clipsonic.errors import ClipsonicError
from clipsonic.files import atomic_output

# Output container by extension → (FFmpeg format, audio encoder). AAC where the container is
# usually played by browsers and phones; Opus is WebM's only common choice.
CONTAINERS: dict[str, tuple[str, str]] = {
    ".mp4": ("mp4", "aac"), ".m4v": ("mp4", "aac"), ".mov": ("mov", "aac"), ".mkv": ("matroska", "aac"),
    ".webm": ("webm", "libopus"), ".avi": ("avi", "libmp3lame"), ".ts": ("mpegts", "aac")}


def video_span(path: str | os.PathLike) -> tuple[float, float]:
    """``(start, duration)`` in seconds of the first video stream, from its packets (no decoding)."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ClipsonicError(f"{path}: no video stream to copy")
            spans = [(p.pts * p.time_base, (p.pts + (p.duration or 0)) * p.time_base)  # (start, end) in s
                     for p in container.demux(container.streams.video[0]) if p.pts is not None]
    except av.error.FFmpegError as exc:
        raise ClipsonicError(f"{path}: cannot read the video ({exc})") from None
    if not spans:
        raise ClipsonicError(f"{path}: the video stream has no frames")
    first = min(start for start, _ in spans)
    return float(first), float(max(end for _, end in spans) - first)


def mux_audio(video: str | os.PathLike, audio: np.ndarray, sample_rate: int, out: str | os.PathLike) -> Path:
    """Write ``out``: the first video stream of ``video`` (copied) + ``audio`` (float32 mono ``[samples]``
    in [-1, 1], louder samples clipped) as its sound. ``out``'s extension picks the container
    (:data:`CONTAINERS`), which must store the video's codec (H.264 cannot go into .webm)."""
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in CONTAINERS:
        raise ClipsonicError(f"{out}: cannot write a video with extension {out.suffix!r}; use one of "
                             f"{sorted(CONTAINERS)}")
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1 or audio.size == 0:
        raise ClipsonicError(f"expected a mono waveform [samples], got shape {list(audio.shape)}")
    start, duration = video_span(video)
    n = int(round(duration * sample_rate))
    audio = np.clip(np.pad(audio[:n], (0, max(0, n - audio.size))), -1.0, 1.0)
    fmt, codec = CONTAINERS[suffix]
    try:
        with atomic_output(out) as tmp:
            _remux(video, audio, sample_rate, start, tmp, fmt, codec)
    except (av.error.FFmpegError, ValueError) as exc:  # PyAV refuses some codec/container pairs with ValueError
        raise ClipsonicError(f"cannot copy the video of {video} into {out} ({exc}); a container that "
                       f"stores its codec (often the input's own extension) avoids this") from None
    return out


def _remux(video, audio: np.ndarray, sample_rate: int, start: float, tmp: Path, fmt: str, codec: str) -> None:
    """Encode ``audio`` [N] in packets stamped from ``start`` seconds (PyAV re-frames and resamples), then copy
    the video packets and interleave the audio packets by time."""
    with av.open(str(video)) as src, av.open(str(tmp), "w", format=fmt) as dst:
        v_in = src.streams.video[0]
        v_out = dst.add_stream_from_template(v_in)
        # Opus only takes these rates; other rates are resampled to 48 kHz by PyAV's encoder front end
        rate = sample_rate if codec != "libopus" or sample_rate in (8000, 12000, 16000, 24000, 48000) else 48000
        a_out = dst.add_stream(codec, rate=rate)
        a_out.layout = "mono"
        packets = []
        for s in range(0, audio.size, 4096):
            frame = av.AudioFrame.from_ndarray(audio[None, s:s + 4096].copy(), format="fltp", layout="mono")
            frame.sample_rate = sample_rate
            frame.pts = int(round(start * sample_rate)) + s
            frame.time_base = Fraction(1, sample_rate)
            packets.extend(a_out.encode(frame))
        packets.extend(a_out.encode(None))
        pending = [(float((p.dts if p.dts is not None else p.pts) * p.time_base), p) for p in packets]  # (s, packet)
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
