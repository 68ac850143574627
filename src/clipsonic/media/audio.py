"""``load_audio``: decode, downmix and resample a segment of a file's sound."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import soxr

from clipsonic.media._container import (
    _AV_ERRORS,
    MediaError,
    _audio_stream,
    _check_rate,
    _check_time,
    _frames,
    _open,
    _origin,
    _seconds,
)

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
    *,
    pad_end: bool = False,
) -> np.ndarray:
    """Decode a file's (best) audio track to float32 mono ``[samples]`` at ``sample_rate``.

    Channels are averaged (stereo and 5.1 alike; LFE included). Resampling is soxr "HQ".
    ``start`` (default 0) is on the file's timeline (see the module docstring); sample k of
    the result is the sound at ``(round(start * sample_rate) + k) / sample_rate`` seconds, so a
    segment is exactly a slice of the whole decode.
    With ``duration``, exactly ``round(duration * sample_rate)`` samples come back; a segment
    running up to :data:`END_TOLERANCE_S` past the end of the track is zero-padded, one running
    further is a :class:`MediaError` (with ``pad_end``, zero-padded too). Without it, everything
    from ``start`` to the end.
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
    if end is not None and duration is not None and hi > end + END_TOLERANCE_S and not pad_end:
        raise MediaError(
            f"{path}: segment {start:.3f}-{hi:.3f} s runs past the end of the audio ({end:.3f} s); "
            "ask for a shorter duration"
        )
    wanted = round(float(duration) * rate) if duration is not None else round(end * rate) - round(start * rate)
    offset = round(start * rate) - first
    out = audio[offset:offset + wanted]
    if len(out) < wanted:  # the track ends within the tolerance, or pad_end
        out = np.concatenate([out, np.zeros(wanted - len(out), np.float32)])
    return np.ascontiguousarray(out, dtype=np.float32)


# --- frames ----------------------------------------------------------------------------------

