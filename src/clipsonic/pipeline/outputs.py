"""Writing a generation to disk. A *target* is ``out.wav``/``out.flac`` (one clip), a video file name (one
clip of a video query: a copy of that video with the new sound) or a directory (``NNN-<query>.wav``, plus
``.<video ext>`` for video queries and ``.png`` mels on request). Files appear whole or not at all.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from clipsonic.errors import ClipsonicError
from clipsonic.media import save_audio
from clipsonic.mux import CONTAINERS, mux_audio
from clipsonic.pipeline.queries import check_positive_int
from clipsonic.plotting import save_mel_image

AUDIO_SUFFIXES = (".wav", ".flac")


def target_kind(target: Path) -> str:
    """"audio", "video" (a single file of that kind) or "dir"."""
    suffix = target.suffix.lower()
    if target.is_dir() or not suffix:
        return "dir"
    if suffix in AUDIO_SUFFIXES:
        return "audio"
    if suffix in CONTAINERS:
        return "video"
    raise ClipsonicError(f"{target}: unknown output type {target.suffix!r}; use .wav, .flac, a video file "
                         f"({', '.join(CONTAINERS)}) or a directory")


def check_target(target: str | os.PathLike, rows: int, query_kind: str) -> Path:
    """``Path(target)``, after refusing a one-file target for several rows, a video file for a non-video
    query, or a place that cannot be written."""
    target = Path(target)
    kind = target_kind(target)
    if kind != "dir" and rows != 1:
        raise ClipsonicError(f"{rows} clips to write but -o {target} is one file; give a directory")
    if kind == "video" and query_kind != "video":
        raise ClipsonicError(f"-o {target} is a video file, but the query is {query_kind}, not a video; use .wav or a directory")
    if kind == "dir":
        check_writable(target)
    else:
        check_output_file(target, (*AUDIO_SUFFIXES, *CONTAINERS), "an audio or video file")
    return target


def check_writable(folder: Path) -> None:
    """Refuse (one line) a folder that cannot be created or written: its nearest existing ancestor must be a
    writable directory (a file there, e.g. ``-o notes.txt/out``, is refused before any slow work)."""
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ClipsonicError(f"cannot write to {folder}: {existing} is not a writable directory")


def check_output_file(path: str | os.PathLike, suffixes: tuple[str, ...], what: str) -> Path:
    """``Path(path)`` for a file a command will write (an existing one is replaced whole), after refusing an
    unknown suffix (the message lists ``suffixes``), a directory in its place or a folder that cannot be written."""
    path = Path(path)
    if path.suffix.lower() not in suffixes:
        raise ClipsonicError(f"{path}: cannot write {path.suffix or 'suffix-less'!r} files; give {what} "
                             f"({', '.join(suffixes)})")
    if path.is_dir():
        raise ClipsonicError(f"{path} is a directory; give a file name ({', '.join(suffixes)})")
    check_writable(path.parent)
    if path.exists() and not os.access(path, os.W_OK):
        raise ClipsonicError(f"cannot overwrite {path}: not writable")
    return path


def _save_rows(output, target: Path, videos: list[str | os.PathLike] | None, save_mel: bool,
               first_index: int) -> list[Path]:
    """Write an output's rows to a checked ``target``; ``videos``: each row's video, for video queries."""
    kind = target_kind(target)
    written: list[Path] = []
    for i, audio in enumerate(output.audios):
        if output.durations:
            audio = audio[: int(round(output.durations[i] * output.sample_rate))]
        if kind == "dir":
            name = re.sub(r"[^a-z0-9]+", "-", output.queries[i].lower()).strip("-")[:40].strip("-") or "query"
            stem = target / f"{first_index + i:03d}-{name}"  # a file-name-safe short form of the query
            paths = [stem.with_suffix(".wav")]
            if videos:
                suffix = Path(videos[i]).suffix.lower()
                paths.append(stem.with_suffix(suffix if suffix in CONTAINERS else ".mp4"))
        else:
            stem, paths = target.with_suffix(""), [target]
        stem.parent.mkdir(parents=True, exist_ok=True)
        for path in paths:
            if path.suffix.lower() in AUDIO_SUFFIXES:
                save_audio(path, np.asarray(audio, dtype=np.float32), output.sample_rate)
            else:
                mux_audio(videos[i], audio, output.sample_rate, path)
            written.append(path)
        if save_mel:
            save_mel_image(output.mels[i], output.mel_config, stem.with_suffix(".png"), title=output.queries[i])
            written.append(stem.with_suffix(".png"))
    return written


def generate_files(pipe, query, target: str | os.PathLike, *, batch_size: int = 8, num_samples: int = 1,
                   seed: int | None = None, save_mel: bool = False, progress=None, **call) -> list[Path]:
    """Generate for a parsed query and write every row to ``target`` (the files, in row order). Row i uses
    ``seed + i`` however texts are batched (images and videos go one per call); ``call`` goes to the pipeline."""
    check_positive_int("batch_size", batch_size)
    target = check_target(target, len(query) * num_samples, query.kind)
    per_call = batch_size if query.kind == "text" else 1
    starts = range(0, len(query), per_call)
    written: list[Path] = []
    for n, start in enumerate(starts):
        items = query.items[start:start + per_call]
        rows = len(items) * num_samples
        seeds = None if seed is None else [seed + start * num_samples + i for i in range(rows)]
        out = pipe(**{query.kind: items}, seed=seeds, num_samples=num_samples, **call,
                   progress=progress and (lambda done, total, n=n: progress(n * total + done, len(starts) * total)))
        videos = [items[i // num_samples] for i in range(rows)] if query.kind == "video" else None
        written += _save_rows(out, target, videos, save_mel, first_index=start * num_samples)
    return written
