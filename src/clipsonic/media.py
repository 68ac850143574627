"""Read sound and pictures from media files (PyAV), write sound files (soundfile).

One timeline: every time here is in seconds from the start of the file as FFmpeg defines it
(the container's ``start_time``), exactly as ``ffmpeg -ss`` counts. Sound and pictures share
it, so the frame returned for ``t`` is the one on screen while the sample at ``t`` plays. A
track that begins later than the file (a non-zero start pts) is preceded by silence.

Every problem with a file (missing, empty, truncated, not media, no such stream, times outside
it, undecodable data) raises :class:`MediaError` naming the file; PyAV's exceptions never escape.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import av
import numpy as np
import soundfile
import soxr

from clipsonic.errors import ClipsonicError

log = logging.getLogger(__name__)

# A requested audio segment may end this far past the decoded end and is zero-padded there:
# lossy tracks routinely stop a frame or two (20-40 ms) before the container's duration.
END_TOLERANCE_S = 0.05
# load_audio seeks instead of decoding from the top only for starts beyond this; it seeks
# PREROLL earlier, because AAC/MP3/Opus decoders need a few frames before their output is right.
AUDIO_SEEK_MIN_S = 10.0
AUDIO_SEEK_PREROLL_S = 1.0
# Extra input kept on each side of a segment so the resampling filter sees real neighbours.
_RESAMPLE_MARGIN_S = 0.1
RESAMPLE_QUALITY = "HQ"  # soxr: 20-bit precision, flat passband, no aliasing
# Formats whose demuxers seek by estimated byte position, so timestamps after a seek are
# approximate: decode these from the start.
_ROUGH_SEEK_FORMATS = {"mp3", "aac", "ac3", "eac3", "mpegts", "mpeg", "loas", "latm"}
# load_frames decodes forward through gaps up to this long and seeks across longer ones.
FRAME_SEEK_GAP_S = 2.0
_EPS = 1e-6  # seconds: float round-off when comparing times with frame timestamps
_MAX_CHANNELS = 8
_WRITE_FORMATS = {".wav": "WAV", ".flac": "FLAC"}
# What PyAV raises on broken input: its FFmpegError family, plus plain ValueError / IndexError /
# OverflowError from its Python layer on nonsense headers.
_AV_ERRORS = (av.error.FFmpegError, OSError, ValueError, IndexError, OverflowError)


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


# --- opening files and streams -------------------------------------------------------------

def _reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def _open_container(path: Path) -> Any:
    if not path.exists():
        raise MediaError(f"{path}: file not found")
    if not path.is_file():
        raise MediaError(f"{path}: not a regular file")
    if path.stat().st_size == 0:
        raise MediaError(f"{path}: empty file (0 bytes)")
    try:
        return av.open(str(path), "r", metadata_errors="ignore")
    except _AV_ERRORS as exc:
        raise MediaError(f"{path}: not a readable media file ({_reason(exc)})") from exc


@contextlib.contextmanager
def _open(path: Path) -> Iterator[Any]:
    container = _open_container(path)
    try:
        yield container
    finally:
        container.close()


def _describe_streams(container: Any) -> str:
    kinds = [f"{s.type} {s.codec_context.name if s.codec_context else '?'}" for s in container.streams]
    return ", ".join(kinds) or "none"


def _audio_stream(container: Any, path: Path) -> Any:
    if not container.streams.audio:
        raise MediaError(f"{path}: no audio stream (streams: {_describe_streams(container)})")
    return container.streams.best("audio")


def _video_stream(container: Any, path: Path, required: bool = True) -> Any:
    """The best video stream that is not cover art (an attached picture)."""
    streams = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
    if not streams and required:
        raise MediaError(f"{path}: no video stream (streams: {_describe_streams(container)})")
    best = container.streams.best("video")
    return best if best in streams else (streams[0] if streams else None)


def _origin(container: Any) -> float:
    """Seconds at which the file's timeline starts (FFmpeg's start_time; 0 when unknown)."""
    if container.start_time is not None:
        return container.start_time / av.time_base
    starts = [float(s.start_time * s.time_base) for s in container.streams if s.start_time is not None]
    return min(starts, default=0.0)


def _frames(container: Any, stream: Any, path: Path) -> Iterator[Any]:
    """Decoded frames of ``stream``; decoding errors become :class:`MediaError`."""
    decoded, last_pts = container.decode(stream), None
    while True:
        try:
            frame = next(decoded)
        except StopIteration:
            return
        except _AV_ERRORS as exc:
            at = "the start" if last_pts is None else f"{float(last_pts * stream.time_base):.3f} s"
            raise MediaError(
                f"{path}: decoding the {stream.type} stream failed after {at} ({_reason(exc)}); "
                "the file may be truncated or corrupt"
            ) from exc
        last_pts = frame.pts if frame.pts is not None else last_pts
        yield frame


def _seconds(frame: Any, stream: Any, origin: float, path: Path) -> float:
    if frame.pts is None:
        raise MediaError(f"{path}: a decoded {stream.type} frame has no timestamp; cannot place it in time")
    return float(frame.pts * stream.time_base) - origin


def _check_rate(sample_rate: Any, path: Path) -> int:
    number = isinstance(sample_rate, (int, float, np.number)) and not isinstance(sample_rate, bool)
    if not (number and math.isfinite(sample_rate) and sample_rate > 0 and int(sample_rate) == sample_rate):
        raise MediaError(f"{path}: sample_rate must be a positive whole number of Hz, got {sample_rate!r}")
    return int(sample_rate)


def _check_time(value: Any, what: str, path: Path) -> float:
    try:
        t = float(value)
    except (TypeError, ValueError):
        t = math.nan
    if not math.isfinite(t) or t < 0:
        raise MediaError(f"{path}: {what} must be a finite number of seconds >= 0, got {value!r}")
    return t


# --- probe -----------------------------------------------------------------------------------

def probe(path: str | os.PathLike) -> MediaInfo:
    """Container, duration and stream properties of a media file, without decoding it."""
    path = Path(path)
    with _open(path) as container:
        audio = container.streams.best("audio") if container.streams.audio else None
        video = _video_stream(container, path, required=False)
        actx = audio.codec_context if audio else None
        vctx = video.codec_context if video else None
        fps = video.average_rate if video else None
        return MediaInfo(
            path=str(path),
            container=container.format.name,
            duration=_duration(container, path),
            has_audio=audio is not None,
            has_video=video is not None,
            audio_sample_rate=actx.sample_rate if actx else None,
            audio_channels=actx.layout.nb_channels if actx else None,
            video_width=vctx.width if vctx else None,
            video_height=vctx.height if vctx else None,
            video_fps=float(fps) if fps else None,
            video_codec=vctx.codec.canonical_name if vctx else None,
            audio_codec=actx.codec.canonical_name if actx else None,
        )


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
    except _AV_ERRORS as exc:
        raise MediaError(f"{path}: reading packets to measure the duration failed ({_reason(exc)})") from exc
    if end is None:
        raise MediaError(f"{path}: cannot tell the duration: the file has no timestamps")
    return end


# --- audio -----------------------------------------------------------------------------------

def _mono(frame: Any) -> np.ndarray:
    """A decoded audio frame as float32 mono ``[samples]``, channels averaged."""
    data = frame.to_ndarray()  # planar: [C, N]; packed (interleaved): [1, N * C]
    channels = frame.layout.nb_channels
    if not frame.format.is_planar:
        data = data.reshape(-1, channels).T
    if data.dtype.kind == "f":
        data = data.astype(np.float32, copy=False)
    elif data.dtype.kind == "u":  # u8 PCM: 128 is zero
        data = (data.astype(np.float32) - 128.0) / 128.0
    else:
        data = data.astype(np.float32) / float(2 ** (8 * data.dtype.itemsize - 1))
    return np.add.reduce(data, axis=0) * np.float32(1.0 / channels) if channels > 1 else data[0]


class _Resampler:
    """Streaming soxr resampler (identity when the rates agree); output is delay-free.

    Input is gathered into blocks of ~64k samples: one soxr call per decoded frame costs more
    than the resampling itself.
    """

    def __init__(self, rate_in: int, rate_out: int):
        self._stream = None if rate_in == rate_out else soxr.ResampleStream(
            rate_in, rate_out, 1, dtype="float32", quality=RESAMPLE_QUALITY)
        self._pending: list[np.ndarray] = []
        self._pending_len = 0
        self.chunks: list[np.ndarray] = []

    def feed(self, x: np.ndarray, last: bool = False) -> None:
        self._pending.append(x)
        self._pending_len += len(x)
        if last or self._pending_len >= 65536:
            block = np.concatenate(self._pending) if len(self._pending) > 1 else self._pending[0]
            self._pending, self._pending_len = [], 0
            self.chunks.append(block if self._stream is None else self._stream.resample_chunk(block, last=last))

    def output(self) -> np.ndarray:
        self.feed(np.zeros(0, np.float32), last=True)
        return np.concatenate(self.chunks)


def _decode_audio(container: Any, path: Path, rate_out: int, lo: float, hi: float,
                  seek: bool) -> tuple[np.ndarray, int, float | None] | None:
    """Decode the best audio stream over ``[lo, hi)`` seconds (plus margins), resampled.

    Returns ``(audio, first, end)``: ``audio[k]`` is the sound at ``(first + k) / rate_out``
    seconds; ``end`` is where the track ends, None when decoding stopped before it. Resampling
    starts at a native sample on the output grid, so every segment is a slice of the whole
    decode. Returns None when a seek landed after ``lo`` (the caller decodes from the top).
    """
    stream = _audio_stream(container, path)
    origin = _origin(container)
    if seek:
        target = int(math.floor((max(lo - AUDIO_SEEK_PREROLL_S, 0.0) + origin) / stream.time_base))
        try:
            container.seek(target, stream=stream, backward=True)
        except _AV_ERRORS:
            return None
    resampler, rate_in, pos, first, tick = None, 0, 0, 0, float(stream.time_base)
    for frame in _frames(container, stream, path):
        if resampler is None:  # the first frame places the track on the timeline
            if frame.pts is None and seek:
                return None
            rate_in = frame.sample_rate
            pos = round(_seconds(frame, stream, origin, path) * rate_in) if frame.pts is not None else 0
            step = rate_in // math.gcd(rate_in, rate_out)  # native samples between shared grid points
            first = max(math.floor((lo - _RESAMPLE_MARGIN_S) * rate_in) // step * step, 0)
            if seek and pos > first:
                return None
            resampler = _Resampler(rate_in, rate_out)
            if pos > first:  # the track starts late: silence until it does
                resampler.feed(np.zeros(pos - first, np.float32))
        elif frame.sample_rate != rate_in:
            raise MediaError(f"{path}: audio sample rate changes mid-stream ({rate_in} → {frame.sample_rate} Hz)")
        elif frame.pts is not None and abs(frame.pts * tick - origin - pos / rate_in) > 0.1:
            log.debug("%s: audio timestamps jump at %.3f s; samples kept contiguous", path, pos / rate_in)
        samples = _mono(frame)
        if pos + len(samples) > first:
            resampler.feed(samples[max(first - pos, 0):])
        pos += len(samples)
        if pos / rate_in > hi + _RESAMPLE_MARGIN_S:
            return resampler.output(), first * rate_out // rate_in, None
    if resampler is None:
        raise MediaError(f"{path}: the audio stream has no decodable frames")
    return resampler.output(), first * rate_out // rate_in, pos / rate_in


def load_audio(
    path: str | os.PathLike,
    sample_rate: int = 16000,
    start: float | None = None,
    duration: float | None = None,
) -> np.ndarray:
    """Decode a file's (best) audio track to float32 mono ``[samples]`` at ``sample_rate``.

    Channels are averaged (stereo and 5.1 alike; LFE included). Resampling is soxr "HQ".
    ``start`` (default 0) is on the file's timeline (see the module docstring); sample k of
    the result is the sound at ``(round(start * sample_rate) + k) / sample_rate`` seconds, so a
    segment is exactly a slice of the whole decode.
    With ``duration``, exactly ``round(duration * sample_rate)`` samples come back; a segment
    running up to :data:`END_TOLERANCE_S` past the end of the track is zero-padded, one running
    further is a :class:`MediaError`. Without it, everything from ``start`` to the end.
    Starts beyond :data:`AUDIO_SEEK_MIN_S` seek; Matroska/WebM keep millisecond timestamps, so
    there a seek may place the sound up to 1 ms off (elsewhere seeking changes nothing).
    """
    path = Path(path)
    rate = _check_rate(sample_rate, path)
    start = _check_time(0.0 if start is None else start, "start", path)
    if duration is not None and _check_time(duration, "duration", path) == 0:
        raise MediaError(f"{path}: duration must be > 0 seconds, got {duration!r}")
    hi = math.inf if duration is None else start + float(duration)
    with _open(path) as container:
        seek = start > AUDIO_SEEK_MIN_S and not set(container.format.name.split(",")) & _ROUGH_SEEK_FORMATS
        decoded = _decode_audio(container, path, rate, start, hi, seek)
    if decoded is None:
        log.debug("%s: seeking to %.3f s missed; decoding from the start", path, start)
        with _open(path) as container:
            decoded = _decode_audio(container, path, rate, start, hi, seek=False)
    audio, first, end = decoded
    if end is not None and start >= end:
        raise MediaError(f"{path}: start {start:.3f} s is at or beyond the end of the audio ({end:.3f} s)")
    if end is not None and duration is not None and hi > end + END_TOLERANCE_S:
        raise MediaError(
            f"{path}: segment {start:.3f}-{hi:.3f} s runs past the end of the audio ({end:.3f} s); "
            "ask for a shorter duration"
        )
    wanted = round(float(duration) * rate) if duration is not None else round(end * rate) - round(start * rate)
    offset = round(start * rate) - first
    out = audio[offset:offset + wanted]
    if len(out) < wanted:  # the track ends within the tolerance
        out = np.concatenate([out, np.zeros(wanted - len(out), np.float32)])
    return np.ascontiguousarray(out, dtype=np.float32)


# --- frames ----------------------------------------------------------------------------------

class _FrameCursor:
    """Walks forward through one video stream; seeks (to the keyframe before) only across long gaps.

    ``current`` is the last frame with time <= the last asked time, ``upcoming`` the frame after it
    (None at the end of the stream).
    """

    def __init__(self, path: Path):
        self.path = path
        self.container = _open_container(path)
        try:
            self._reset()
        except MediaError:
            self.container.close()
            raise

    def _reset(self) -> None:
        self.stream = _video_stream(self.container, self.path)
        self.stream.codec_context.thread_type = "AUTO"
        self.origin = _origin(self.container)
        self.frames: Iterator[Any] | None = None
        self.current = self.upcoming = None

    def close(self) -> None:
        self.container.close()

    def time(self, frame: Any) -> float:
        return _seconds(frame, self.stream, self.origin, self.path)

    def _from_top(self, reopen: bool = True) -> None:
        if reopen:  # rewind by reopening: the one move every format supports
            self.container.close()
            self.container = _open_container(self.path)
            self._reset()
        self.frames = _frames(self.container, self.stream, self.path)
        self.current, self.upcoming = None, next(self.frames, None)

    def _seek(self, t: float) -> None:
        """Position so that the next decoded frame is at or before ``t``."""
        log.debug("%s: seeking to the keyframe before %.3f s", self.path, t)
        for back in (0.0, 1.0, 5.0, 30.0):
            target = max(t - back, 0.0) + self.origin
            try:
                self.container.seek(int(math.floor(target / self.stream.time_base)), stream=self.stream, backward=True)
            except _AV_ERRORS:
                break
            self.frames = _frames(self.container, self.stream, self.path)
            self.current, self.upcoming = None, next(self.frames, None)
            if self.upcoming is not None and self.time(self.upcoming) <= t + _EPS:
                return
        log.debug("%s: seeking before %.3f s failed; decoding from the start", self.path, t)
        self._from_top()

    def frame_at(self, t: float) -> Any:
        """The frame on screen at ``t``: pts <= t < next pts. Call with non-decreasing ``t``."""
        # Where decoding stands: the file's start before the first call, inf at the end of the stream.
        here = 0.0 if self.frames is None else self.time(self.upcoming) if self.upcoming is not None else math.inf
        if t - here > FRAME_SEEK_GAP_S and self._keyframe_before(t) > here:
            self._seek(t)
        elif self.frames is None:
            self._from_top(reopen=False)
        while self.upcoming is not None and self.time(self.upcoming) <= t + _EPS:
            self.current, self.upcoming = self.upcoming, next(self.frames, None)
        if self.current is None:
            if self.upcoming is None:
                raise MediaError(f"{self.path}: the video stream has no decodable frames")
            return self.upcoming  # t precedes the first frame: players show the first frame
        if self.upcoming is None:  # at the end, the last frame lasts its duration
            end = self.time(self.current) + self._duration(self.current)
            if t >= end - _EPS:
                raise MediaError(f"{self.path}: time {t:.3f} s is beyond the end of the video ({end:.3f} s)")
        return self.current

    def _keyframe_before(self, t: float) -> float:
        """Time of the indexed keyframe at or before ``t`` (inf when the file has no index):
        seeking only pays when that keyframe lies beyond where decoding already is. Index times
        are decoding times (dts), a few frames early with B-frames: an estimate on the safe side."""
        entries = self.stream.index_entries
        i = entries.search_timestamp(int(math.floor((t + self.origin) / self.stream.time_base))) if len(entries) else -1
        return math.inf if i < 0 else float(entries[i].timestamp * self.stream.time_base) - self.origin

    def _duration(self, frame: Any) -> float:
        if frame.duration:
            return float(frame.duration * self.stream.time_base)
        rate = self.stream.average_rate
        return 1.0 / float(rate) if rate else 0.0


def load_frames(path: str | os.PathLike, times: Sequence[float]) -> list[np.ndarray]:
    """RGB uint8 pictures ``[H, W, 3]`` of the frames on screen at ``times`` (seconds), in the caller's order.

    Accurate seeking: for each time, the frame with pts <= t < next pts, decoded forward from the
    keyframe before it. Times are visited in sorted order; decoding runs on through gaps up to
    :data:`FRAME_SEEK_GAP_S`, and through longer ones when the file's index shows no keyframe
    in between, so close times cost one decoding pass. A time before the first
    frame gives the first frame; a time at or past the end of the last frame is a MediaError.
    """
    path = Path(path)
    times = [_check_time(t, "frame time", path) for t in times]
    cursor = _FrameCursor(path)
    try:
        pictures: list[np.ndarray | None] = [None] * len(times)
        last_frame, last_rgb = None, None
        for i in sorted(range(len(times)), key=times.__getitem__):
            frame = cursor.frame_at(times[i])
            if frame is last_frame:
                pictures[i] = last_rgb.copy()
                continue
            try:
                last_frame, last_rgb = frame, frame.to_ndarray(format="rgb24")
            except _AV_ERRORS as exc:
                raise MediaError(f"{path}: converting the frame at {times[i]:.3f} s to RGB failed ({_reason(exc)})") from exc
            pictures[i] = last_rgb
        return pictures
    finally:
        cursor.close()


# --- writing ---------------------------------------------------------------------------------

def _channels_last(audio: Any, path: Path) -> np.ndarray:
    """``[samples]`` or ``[C, samples]`` (numpy or torch) → float32 ``[samples, C]`` for soundfile."""
    if hasattr(audio, "detach"):  # torch, without importing it
        audio = audio.detach().to("cpu").float().numpy()
    data = np.asarray(audio)
    if data.dtype.kind != "f":
        raise MediaError(f"{path}: expected float audio in [-1, 1], got dtype {data.dtype}")
    if data.ndim == 1:
        data = data[None]
    if data.ndim != 2 or data.shape[0] > _MAX_CHANNELS:
        raise MediaError(
            f"{path}: expected audio shaped [samples] or [channels, samples] with at most "
            f"{_MAX_CHANNELS} channels, got {tuple(np.shape(audio))} (transpose [samples, channels]?)"
        )
    if not np.isfinite(data).all():
        raise MediaError(f"{path}: audio contains NaN or infinite values")
    return np.ascontiguousarray(data.T, dtype=np.float32)


def save_audio(path: str | os.PathLike, audio: Any, sample_rate: int) -> None:
    """Write ``[samples]`` or ``[C, samples]`` float audio to a 16-bit .wav or .flac, atomically.

    Values beyond [-1, 1] are not clipped: a warning is logged and the whole signal is scaled
    down so its peak is 1. The file appears under its name only once completely written.
    """
    path = Path(path)
    fmt = _WRITE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise MediaError(f"{path}: cannot write '{path.suffix}' files; use .wav or .flac")
    rate = _check_rate(sample_rate, path)
    data = _channels_last(audio, path)
    peak = float(np.abs(data).max()) if data.size else 0.0
    if peak > 1.0:
        log.warning("%s: audio peaks at %.3f, beyond [-1, 1]; scaling it down %.2f dB instead of clipping",
                    path, peak, 20 * math.log10(peak))
        data = data / np.float32(peak)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            soundfile.write(fh, data, rate, format=fmt)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError, ValueError) as exc:  # soundfile.LibsndfileError is a RuntimeError
        raise MediaError(f"{path}: writing {fmt} failed ({_reason(exc)})") from exc
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
