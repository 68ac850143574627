"""Audio file access for the vocoder: :mod:`clipsonic.media` when it is there, else soundfile + soxr.

``clipsonic.media`` (PyAV) decodes every container, video included. The fallback reads what
libsndfile reads (wav, flac, ogg, mp3) and resamples with soxr, which is all that vocoder
training on audio folders needs; it is used only when ``clipsonic.media`` cannot be imported.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import os
import tempfile
from pathlib import Path

import numpy as np

from clipsonic.vocoder.base import VocoderError

log = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".aiff", ".aif")


def _media():
    """The media module, or None while it does not exist (it is written alongside this one)."""
    try:
        return importlib.import_module("clipsonic.media")
    except ImportError:
        return None


@dataclasses.dataclass(frozen=True)
class AudioInfo:
    """What reading a file needs: its native rate and length."""

    sample_rate: int
    frames: int

    def samples_at(self, sample_rate: int) -> int:
        return int(self.frames * sample_rate // self.sample_rate)


def probe_audio(path: Path) -> AudioInfo:
    """Native sample rate and length of an audio file; :class:`VocoderError` when unreadable."""
    import soundfile as sf

    try:
        info = sf.info(str(path))
    except Exception as exc:  # libsndfile raises its own error types, RuntimeError and others
        raise VocoderError(f"{path}: not readable as audio ({_short(exc)})") from None
    if info.frames <= 0 or info.samplerate <= 0:
        raise VocoderError(f"{path}: contains no audio samples")
    return AudioInfo(int(info.samplerate), int(info.frames))


def read_segment(path: Path, info: AudioInfo, sample_rate: int, start: int, length: int) -> np.ndarray:
    """float32 mono ``[length]`` at ``sample_rate`` from sample ``start`` (zero-padded past the end)."""
    import soundfile as sf
    import soxr

    ratio = info.sample_rate / sample_rate
    margin = 64 if info.sample_rate != sample_rate else 0  # resampler context at the edges
    n0 = max(0, int(start * ratio) - margin)
    n1 = min(info.frames, int(np.ceil((start + length) * ratio)) + margin)
    try:
        data, sr = sf.read(str(path), start=n0, stop=n1, dtype="float32", always_2d=True)
    except Exception as exc:
        raise VocoderError(f"{path}: decoding failed ({_short(exc)})") from None
    wav = data.mean(axis=1)
    if sr != sample_rate:
        wav = soxr.resample(wav, sr, sample_rate).astype(np.float32)
    offset = int(round((start * ratio - n0) / ratio))
    wav = wav[offset:offset + length]
    return np.pad(wav, (0, length - len(wav))) if len(wav) < length else wav


def load_audio(path: str | os.PathLike, sample_rate: int = 16000, start: float | None = None,
               duration: float | None = None) -> np.ndarray:
    """float32 mono ``[samples]`` of an audio or video file at ``sample_rate``."""
    media = _media()
    path = Path(path)
    if media is not None:
        try:
            return media.load_audio(path, sample_rate=sample_rate, start=start, duration=duration)
        except media.MediaError as exc:
            raise VocoderError(str(exc)) from None
    if not path.is_file():
        raise VocoderError(f"{path}: no such file")
    info = probe_audio(path)
    first = int(round((start or 0.0) * sample_rate))
    total = info.samples_at(sample_rate)
    length = total - first if duration is None else int(round(duration * sample_rate))
    if length <= 0:
        raise VocoderError(f"{path}: nothing to read from {start} s (the file lasts {total / sample_rate:.2f} s)")
    return read_segment(path, info, sample_rate, first, min(length, max(0, total - first)))


def save_audio(path: str | os.PathLike, wav: np.ndarray, sample_rate: int) -> None:
    """Write mono float audio (wav/flac/ogg by suffix) via a temporary file and an atomic rename."""
    media = _media()
    path = Path(path)
    if media is not None and hasattr(media, "save_audio"):
        try:
            media.save_audio(path, wav, sample_rate)
            return
        except media.MediaError as exc:
            raise VocoderError(str(exc)) from None
    import soundfile as sf

    fmt = {".wav": "WAV", ".flac": "FLAC", ".ogg": "OGG"}.get(path.suffix.lower())
    if fmt is None:
        raise VocoderError(f"{path}: write .wav, .flac or .ogg")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        sf.write(tmp, np.clip(np.asarray(wav, dtype=np.float32), -1.0, 1.0), sample_rate, format=fmt)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
