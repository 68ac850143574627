"""``load_audio``: decode, downmix and resample a segment of a file's sound; ``save_audio``: write
wav/flac files atomically, never silently clipped."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
import soxr

from clipsonic.files import atomic_output
from clipsonic.media._container import MediaError, Track, check_rate, check_time, reason

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
    """Streaming soxr resampling (identity when the rates agree; delay-free output), fed in ~64k-sample
    blocks: one soxr call per decoded frame costs more than the resampling itself."""

    def __init__(self, rate_in: int, rate_out: int):
        self.soxr = None if rate_in == rate_out else soxr.ResampleStream(
            rate_in, rate_out, 1, dtype="float32", quality="HQ")  # soxr HQ: 20-bit, flat passband, no aliasing
        self.pending: list[np.ndarray] = []
        self.chunks: list[np.ndarray] = []

    def feed(self, x: np.ndarray, last: bool = False) -> None:
        self.pending.append(x)
        if last or sum(map(len, self.pending)) >= 65536:
            block = np.concatenate(self.pending)
            self.pending = []
            self.chunks.append(block if self.soxr is None else self.soxr.resample_chunk(block, last=last))

    def output(self) -> np.ndarray:
        self.feed(np.zeros(0, np.float32), last=True)
        return np.concatenate(self.chunks)


def _decode_audio(track: Track, rate_out: int, lo: float, hi: float,
                  seek: bool) -> tuple[np.ndarray, int, float | None] | None:
    """Decode the track over ``[lo, hi)`` seconds (plus margins), resampled, as ``(audio, first, end)``:
    ``audio[k]`` is the sound at ``(first + k) / rate_out`` seconds; ``end`` is where the track ends, None when
    decoding stopped before it. Resampling starts at a native sample on the output grid, so every segment is a
    slice of the whole decode. None when a seek failed or landed after ``lo`` (the caller decodes from the top)."""
    if seek and not track.seek(max(lo - AUDIO_SEEK_PREROLL_S, 0.0)):
        return None
    path, resampler, rate_in, pos, first = track.path, None, 0, 0, 0
    for frame in track.frames():
        if resampler is None:  # the first frame places the track on the timeline
            if frame.pts is None and seek:
                return None
            rate_in = frame.sample_rate
            pos = round(track.seconds(frame) * rate_in) if frame.pts is not None else 0
            step = rate_in // math.gcd(rate_in, rate_out)  # native samples between shared grid points
            first = max(math.floor((lo - _RESAMPLE_MARGIN_S) * rate_in) // step * step, 0)
            if seek and pos > first:
                return None
            resampler = _Resampler(rate_in, rate_out)
            if pos > first:  # the track starts late: silence until it does
                resampler.feed(np.zeros(pos - first, np.float32))
        elif frame.sample_rate != rate_in:
            raise MediaError(f"{path}: audio sample rate changes mid-stream ({rate_in} → {frame.sample_rate} Hz)")
        elif frame.pts is not None and abs(track.seconds(frame) - pos / rate_in) > 0.1:
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


def load_audio(path: str | os.PathLike, sample_rate: int = 16000, start: float | None = None,
               duration: float | None = None, *, pad_end: bool = False) -> np.ndarray:
    """Decode a file's (best) audio track to float32 mono ``[samples]`` at ``sample_rate``.

    Channels are averaged (stereo and 5.1 alike; LFE included). Resampling is soxr "HQ". ``start`` (default 0)
    is on the file's timeline (see the package docstring); sample k of the result is the sound at
    ``(round(start * sample_rate) + k) / sample_rate`` seconds, so a segment is exactly a slice of the whole decode.
    With ``duration``, exactly ``round(duration * sample_rate)`` samples come back; a segment running up to
    :data:`END_TOLERANCE_S` past the end of the track is zero-padded, one running further is a :class:`MediaError`
    (with ``pad_end``, zero-padded too). Without it, everything from ``start`` to the end.
    Starts beyond :data:`AUDIO_SEEK_MIN_S` seek; Matroska/WebM keep millisecond timestamps, so there a seek may
    place the sound up to 1 ms off (elsewhere seeking changes nothing).
    """
    path = Path(path)
    rate = check_rate(sample_rate, path)
    start = check_time(0.0 if start is None else start, "start", path)
    if duration is not None and check_time(duration, "duration", path) == 0:
        raise MediaError(f"{path}: duration must be > 0 seconds, got {duration!r}")
    hi = math.inf if duration is None else start + float(duration)
    with Track(path, "audio") as track:
        seek = start > AUDIO_SEEK_MIN_S and not set(track.container.format.name.split(",")) & _ROUGH_SEEK_FORMATS
        decoded = _decode_audio(track, rate, start, hi, seek)
    if decoded is None:
        log.debug("%s: seeking to %.3f s missed; decoding from the start", path, start)
        with Track(path, "audio") as track:
            decoded = _decode_audio(track, rate, start, hi, seek=False)
    audio, first, end = decoded
    if end is not None and start >= end:
        raise MediaError(f"{path}: start {start:.3f} s is at or beyond the end of the audio ({end:.3f} s)")
    if end is not None and duration is not None and hi > end + END_TOLERANCE_S and not pad_end:
        raise MediaError(f"{path}: segment {start:.3f}-{hi:.3f} s runs past the end of the audio ({end:.3f} s); "
                         "ask for a shorter duration")
    wanted = round(float(duration) * rate) if duration is not None else round(end * rate) - round(start * rate)
    offset = round(start * rate) - first
    out = audio[offset:offset + wanted]
    # zero-padded when the track ends within the tolerance, or with pad_end
    return np.pad(out, (0, wanted - len(out))).astype(np.float32, copy=False)


_MAX_CHANNELS = 8


def save_audio(path: str | os.PathLike, audio: Any, sample_rate: int, *, warn: bool = True) -> float:
    """Write ``[samples]`` or ``[C, samples]`` float audio (numpy or torch) to a 16-bit .wav or .flac, atomically.

    Values beyond [-1, 1] are not clipped: the whole signal is scaled down so its peak is 1 and a warning is logged
    (``warn=False``: a debug line; batch writers report once, from the return value). Returns the gain applied in
    dB (0.0 when none). The file appears under its name only once completely written.
    """
    path = Path(path)
    fmt = {".wav": "WAV", ".flac": "FLAC"}.get(path.suffix.lower())
    if fmt is None:
        raise MediaError(f"{path}: cannot write '{path.suffix}' files; use .wav or .flac")
    rate = check_rate(sample_rate, path)
    if hasattr(audio, "detach"):  # torch, without importing it
        audio = audio.detach().to("cpu").float().numpy()
    data = np.asarray(audio)
    if data.dtype.kind != "f":
        raise MediaError(f"{path}: expected float audio in [-1, 1], got dtype {data.dtype}")
    data = data[None] if data.ndim == 1 else data
    if data.ndim != 2 or data.shape[0] > _MAX_CHANNELS:
        raise MediaError(f"{path}: expected audio shaped [samples] or [channels, samples] with at most "
                         f"{_MAX_CHANNELS} channels, got {tuple(np.shape(audio))} (transpose [samples, channels]?)")
    if not np.isfinite(data).all():
        raise MediaError(f"{path}: audio contains NaN or infinite values")
    data = np.ascontiguousarray(data.T, dtype=np.float32)  # [samples, C] for soundfile
    peak = float(np.abs(data).max()) if data.size else 0.0
    gain_db = 0.0
    if peak > 1.0:
        gain_db = 20 * math.log10(peak)
        log.log(logging.WARNING if warn else logging.DEBUG,
                "%s: audio peaks at %.3f, beyond [-1, 1]; scaling it down %.2f dB instead of clipping",
                path, peak, gain_db)
        data = data / np.float32(peak)
    try:
        with atomic_output(path) as tmp:
            soundfile.write(tmp, data, rate, format=fmt)
    except (OSError, RuntimeError, ValueError) as exc:  # soundfile.LibsndfileError is a RuntimeError
        raise MediaError(f"{path}: writing {fmt} failed ({reason(exc)})") from exc
    return gain_db
