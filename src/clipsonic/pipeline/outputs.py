"""Writing a generation to disk: audio files, muxed video copies, mel images.

A *target* is a file or a directory. ``out.wav`` / ``out.flac`` takes exactly one generated clip;
a video file name (``out.mp4``, ``out.webm`` …) takes one clip generated from a video query and
becomes a copy of that video with the new sound (video stream copied, not re-encoded). Anything
else is a directory: row i is written as ``NNN-<query>.wav`` (plus ``NNN-<query>.<video ext>``
for video queries, and ``.png`` mel images on request). Every file appears whole or not at all.
For video queries the audio is cut to the video's exact duration.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from clipsonic.errors import ClipsonicError

AUDIO_SUFFIXES = (".wav", ".flac")


class OutputError(ClipsonicError):
    """Generated audio cannot be written where asked."""


def _video_suffixes() -> tuple[str, ...]:
    from clipsonic.mux import CONTAINERS

    return tuple(CONTAINERS)


def target_kind(target: Path) -> str:
    """"audio", "video" (a single file of that kind) or "dir"."""
    suffix = target.suffix.lower()
    if target.is_dir() or not suffix:
        return "dir"
    if suffix in AUDIO_SUFFIXES:
        return "audio"
    if suffix in _video_suffixes():
        return "video"
    raise OutputError(f"{target}: unknown output type {target.suffix!r}; use .wav, .flac, a video file "
                      f"({', '.join(_video_suffixes())}) or a directory")


def check_target(target: str | os.PathLike, rows: int, query_kind: str) -> Path:
    """Refuse before generating: a single-file target for several rows, a video file for a non-video
    query, or a place that cannot be written. Returns ``Path(target)``."""
    target = Path(target)
    kind = target_kind(target)
    if kind != "dir" and rows != 1:
        raise OutputError(f"{rows} clips to write but -o {target} is one file; give a directory")
    if kind == "video" and query_kind != "video":
        raise OutputError(f"-o {target} is a video file, but the query is {query_kind}, not a video; use .wav or a directory")
    folder = target if kind == "dir" else target.parent
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write to {folder}: {existing} is not a writable directory")
    if target.exists() and kind != "dir" and not os.access(target, os.W_OK):
        raise OutputError(f"cannot overwrite {target}: not writable")
    return target


def slug(text: str, limit: int = 40) -> str:
    """A file-name-safe short form of a query: lowercase letters, digits and dashes."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].strip("-") or "query"


def save_generation(output, target: str | os.PathLike, *, videos: list[str | os.PathLike] | None = None,
                    save_mel: bool = False, first_index: int = 0) -> list[Path]:
    """Write the rows of a :class:`~clipsonic.pipeline.CLIPSonicOutput` to ``target``; returns the files.

    ``videos``: the video of each row (video queries), for the muxed copies and the exact durations.
    ``first_index``: number of the first row in directory names (batches of one prompt file).
    """
    from clipsonic.media import save_audio

    target = check_target(target, len(output.audios), "video" if videos else "other")
    kind = target_kind(target)
    written: list[Path] = []
    for i, audio in enumerate(output.audios):
        if output.durations:
            audio = audio[: int(round(output.durations[i] * output.sample_rate))]
        if kind == "dir":
            stem = target / f"{first_index + i:03d}-{slug(output.queries[i])}"
            paths = [stem.with_suffix(".wav")]
            if videos:
                paths.append(stem.with_suffix(Path(videos[i]).suffix.lower() if Path(videos[i]).suffix.lower()
                                              in _video_suffixes() else ".mp4"))
        else:
            stem, paths = target.with_suffix(""), [target]
        stem.parent.mkdir(parents=True, exist_ok=True)
        for path in paths:
            if path.suffix.lower() in AUDIO_SUFFIXES:
                save_audio(path, np.asarray(audio, dtype=np.float32), output.sample_rate)
            else:
                from clipsonic.mux import mux_audio

                mux_audio(videos[i], audio, output.sample_rate, path)
            written.append(path)
        if save_mel:
            written.append(_save_mel(output.mels[i], output, stem.with_suffix(".png"), output.queries[i]))
    return written


def _save_mel(logmel: np.ndarray, output, path: Path, title: str) -> Path:
    from clipsonic.plotting import save_mel_image

    mel = output.mel_config
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    try:
        save_mel_image(logmel, mel, tmp, title=title)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
