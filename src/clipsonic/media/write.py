"""``save_audio``: wav/flac files written atomically, never silently clipped."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import soundfile

from clipsonic.files import atomic_output
from clipsonic.media._container import MediaError, _check_rate, _reason

log = logging.getLogger(__name__)

_MAX_CHANNELS = 8
_WRITE_FORMATS = {".wav": "WAV", ".flac": "FLAC"}


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


def save_audio(path: str | os.PathLike, audio: Any, sample_rate: int, *, warn: bool = True) -> float:
    """Write ``[samples]`` or ``[C, samples]`` float audio to a 16-bit .wav or .flac, atomically.

    Values beyond [-1, 1] are not clipped: the whole signal is scaled down so its peak is 1 and a
    warning is logged (``warn=False``: a debug line; batch writers report once, from the return
    value). Returns the gain applied in dB (0.0 when none). The file appears under its name only
    once completely written.
    """
    path = Path(path)
    fmt = _WRITE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise MediaError(f"{path}: cannot write '{path.suffix}' files; use .wav or .flac")
    rate = _check_rate(sample_rate, path)
    data = _channels_last(audio, path)
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
        raise MediaError(f"{path}: writing {fmt} failed ({_reason(exc)})") from exc
    return gain_db
