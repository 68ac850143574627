"""Opening media files, their tracks on the shared timeline, and ``probe``."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import numpy as np

from clipsonic.errors import ClipsonicError

# What PyAV raises on broken input: its FFmpegError family, plus plain ValueError / IndexError /
# OverflowError from its Python layer on nonsense headers.
AV_ERRORS = (av.error.FFmpegError, OSError, ValueError, IndexError, OverflowError)


class MediaError(ClipsonicError):
    """A media file cannot be read or written as asked; the message names the file and the problem."""


@dataclasses.dataclass(frozen=True)
class MediaInfo:
    """What :func:`probe` finds. Stream fields are ``None`` when that kind of stream is absent."""

    path: str
    container: str  # FFmpeg's demuxer name, e.g. "mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm", "wav"
    duration: float  # seconds: the container's, else computed from the streams' timestamps
    has_audio: bool
    has_video: bool  # cover art (an attached picture) does not count as video
    audio_sample_rate: int | None
    audio_channels: int | None
    video_width: int | None
    video_height: int | None
    video_fps: float | None  # average rate (variable-rate video has no single rate)
    video_codec: str | None  # FFmpeg codec id names: "h264", "vp9", "aac", "opus", "mp3", …
    audio_codec: str | None


def reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def _open(path: Path) -> Any:
    if not path.exists():
        raise MediaError(f"{path}: file not found")
    if not path.is_file():
        raise MediaError(f"{path}: not a regular file")
    if path.stat().st_size == 0:
        raise MediaError(f"{path}: empty file (0 bytes)")
    try:
        container = av.open(str(path), "r", metadata_errors="ignore")
    except AV_ERRORS as exc:
        raise MediaError(f"{path}: not a readable media file ({reason(exc)})") from exc
    name = container.format.name
    if name == "image2" or name.endswith("_pipe"):  # FFmpeg's still-image demuxers (png_pipe, jpeg_pipe, …)
        container.close()
        raise MediaError(f"{path}: a still image ({name.removesuffix('_pipe')}), not a video or sound file")
    return container


def _best_stream(container: Any, kind: str) -> Any:
    """The best ``kind`` ("audio" or "video") stream, or None; cover art (an attached picture) is no video."""
    if kind == "audio":
        return container.streams.best("audio")
    streams = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
    best = container.streams.best("video")
    return best if best in streams else (streams[0] if streams else None)


def _origin(container: Any) -> float:
    """Seconds at which the file's timeline starts (FFmpeg's start_time; 0 when unknown)."""
    if container.start_time is not None:
        return container.start_time / av.time_base
    starts = [float(s.start_time * s.time_base) for s in container.streams if s.start_time is not None]
    return min(starts, default=0.0)


class Track:
    """The best ``kind`` stream of a file, opened for decoding, with times on the file's timeline."""

    def __init__(self, path: Path, kind: str):
        self.path = path
        self.container = _open(path)
        self.stream = _best_stream(self.container, kind)
        if self.stream is None:
            streams = [f"{s.type} {s.codec_context.name if s.codec_context else '?'}" for s in self.container.streams]
            self.container.close()
            raise MediaError(f"{path}: no {kind} stream (streams: {', '.join(streams) or 'none'})")
        if kind == "video":
            self.stream.codec_context.thread_type = "AUTO"
        self.origin = _origin(self.container)

    def __enter__(self) -> Track:
        return self

    def __exit__(self, *exc: object) -> None:
        self.container.close()

    def pts(self, t: float) -> int:
        """The stream timestamp of ``t`` seconds (rounded down)."""
        return int(math.floor((t + self.origin) / self.stream.time_base))

    def seconds(self, frame: Any) -> float:
        if frame.pts is None:
            raise MediaError(f"{self.path}: a decoded {self.stream.type} frame has no timestamp; cannot place it "
                             "in time")
        return float(frame.pts * self.stream.time_base) - self.origin

    def seek(self, t: float) -> bool:
        """Move to the keyframe at or before ``t`` seconds; False when the demuxer cannot."""
        try:
            self.container.seek(self.pts(t), stream=self.stream, backward=True)
        except AV_ERRORS:
            return False
        return True

    def frames(self) -> Iterator[Any]:
        """Decoded frames from where the track stands; decoding errors become :class:`MediaError`."""
        last_pts = None
        try:
            for frame in self.container.decode(self.stream):
                last_pts = frame.pts if frame.pts is not None else last_pts
                yield frame
        except AV_ERRORS as exc:
            at = "the start" if last_pts is None else f"{float(last_pts * self.stream.time_base):.3f} s"
            raise MediaError(f"{self.path}: decoding the {self.stream.type} stream failed after {at} ({reason(exc)}); "
                             "the file may be truncated or corrupt") from exc


def check_rate(sample_rate: Any, path: Path) -> int:
    number = isinstance(sample_rate, (int, float, np.number)) and not isinstance(sample_rate, bool)
    if not (number and math.isfinite(sample_rate) and sample_rate > 0 and int(sample_rate) == sample_rate):
        raise MediaError(f"{path}: sample_rate must be a positive whole number of Hz, got {sample_rate!r}")
    return int(sample_rate)


def check_time(value: Any, what: str, path: Path) -> float:
    try:
        t = float(value)
    except (TypeError, ValueError):
        t = math.nan
    if not math.isfinite(t) or t < 0:
        raise MediaError(f"{path}: {what} must be a finite number of seconds >= 0, got {value!r}")
    return t


def probe(path: str | os.PathLike) -> MediaInfo:
    """Container, duration and stream properties of a media file, without decoding it."""
    path = Path(path)
    with _open(path) as container:
        audio, video = _best_stream(container, "audio"), _best_stream(container, "video")
        actx = audio.codec_context if audio else None
        vctx = video.codec_context if video else None
        fps = video.average_rate if video else None
        return MediaInfo(
            path=str(path), container=container.format.name, duration=_duration(container, path),
            has_audio=audio is not None, has_video=video is not None,
            audio_sample_rate=actx.sample_rate if actx else None,
            audio_channels=actx.layout.nb_channels if actx else None,
            video_width=vctx.width if vctx else None, video_height=vctx.height if vctx else None,
            video_fps=float(fps) if fps else None, video_codec=vctx.codec.canonical_name if vctx else None,
            audio_codec=actx.codec.canonical_name if actx else None)


def _duration(container: Any, path: Path) -> float:
    """The container's duration; else the latest stream end; else the latest packet end."""
    if container.duration is not None and container.duration > 0:
        return container.duration / av.time_base
    origin = _origin(container)
    ends = [float(((s.start_time or 0) + s.duration) * s.time_base) - origin
            for s in container.streams if s.duration]
    if ends:
        return max(ends)
    end = None
    try:
        for packet in container.demux():
            stamp = packet.pts if packet.pts is not None else packet.dts
            if stamp is not None:
                t = float((stamp + (packet.duration or 0)) * packet.time_base) - origin
                end = t if end is None else max(end, t)
    except AV_ERRORS as exc:
        raise MediaError(f"{path}: reading packets to measure the duration failed ({reason(exc)})") from exc
    if end is None:
        raise MediaError(f"{path}: cannot tell the duration: the file has no timestamps")
    return end
