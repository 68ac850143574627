"""Writing a generation to disk. A *target* is ``out.wav``/``out.flac`` (one clip), a video file name (one
clip of a video query: a copy of that video with the new sound) or a directory (``NNN-<query>.wav``, plus
``.<video ext>`` for video queries and ``.png`` mels on request). Files appear whole or not at all.

Each clip gets a *sidecar* ``NAME.json`` beside it (``out.json``, ``NNN-<query>.json``): its query, seed and every
setting that shapes the audio, with the model's fingerprint, so ``clipsonic generate --from NAME.json`` makes it again.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from clipsonic import __version__
from clipsonic.errors import ClipsonicError
from clipsonic.export import model_fingerprint
from clipsonic.files import read_json, write_json_atomic
from clipsonic.media import save_audio
from clipsonic.mux import CONTAINERS, mux_audio
from clipsonic.pipeline.paths import BUILTIN_DIR
from clipsonic.pipeline.queries import check_positive_int
from clipsonic.plotting import save_mel_image

log = logging.getLogger(__name__)
AUDIO_SUFFIXES = (".wav", ".flac")
SIDECAR_FORMAT, SIDECAR_VERSION = "clipsonic-generation", 1
# What a sidecar's "settings" hold: the pipeline call's arguments that change the audio. The editing ones (audio: an
# absolute path) came later: a sidecar without them means their defaults.
SETTINGS = ("mode", "guidance_scale", "guidance_rescale", "num_inference_steps", "sampler", "seconds", "negative_text",
            "video_frames", "num_frames", "audio", "strength", "mask", "long")
EDIT_SETTINGS = SETTINGS[-4:]

def read_sidecar(path: str | os.PathLike) -> dict[str, Any]:
    """A sidecar written by :func:`generate_files`, checked enough to replay (one-line error otherwise)."""
    data = read_json(path, "generate sidecar (the .json written beside a generated clip)")
    query = data.get("query") if isinstance(data, dict) else None
    if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT:
        raise ClipsonicError(f"{path} is not a clipsonic generate sidecar (no \"format\": \"{SIDECAR_FORMAT}\"); "
                             "give the .json written beside a generated clip")
    if data.get("version") != SIDECAR_VERSION:
        raise ClipsonicError(f"{path}: sidecar version {data.get('version')!r}; this clipsonic reads version "
                             f"{SIDECAR_VERSION} (upgrade clipsonic)")
    settings, seed = data.get("settings"), data.get("seed")
    if (not isinstance(query, dict) or len(query) != 1 or next(iter(query)) not in ("text", "image", "video")
            or not isinstance(next(iter(query.values())), str) or not isinstance(settings, dict)
            or not set(SETTINGS) - set(EDIT_SETTINGS) <= set(settings) <= set(SETTINGS)
            or isinstance(seed, bool) or not isinstance(seed, int)
            or not isinstance(data.get("model_fingerprint"), str)
            or not all(isinstance(data.get(k), str | None) for k in ("model", "clip_model", "vocoder", "dtype"))):
        raise ClipsonicError(f"{path}: a damaged sidecar (needs query, seed, settings with {', '.join(SETTINGS)} "
                             "and model_fingerprint); generate the clip again")
    return data


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
               first_index: int, sidecars: list[dict[str, Any]] | None = None) -> list[Path]:
    """Write an output's rows to a checked ``target``; ``videos``: each row's video, for video queries;
    ``sidecars``: each row's sidecar, written beside its files as ``.json`` once they are complete."""
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
        if sidecars:
            write_json_atomic(paths[0].with_suffix(".json"), sidecars[i])
            log.info("wrote %s (seed %s; settings in %s)", paths[0], output.seeds[i], paths[0].with_suffix(".json").name)
    return written


def generate_files(pipe, query, target: str | os.PathLike, *, batch_size: int = 8, num_samples: int = 1,
                   seed: int | None = None, save_mel: bool = False, progress=None, sidecar: dict[str, Any] | None = None,
                   on_output=None, **call) -> list[Path]:
    """Generate for a parsed query and write every row to ``target`` (the files, in row order). Row i uses
    ``seed + i`` however texts are batched (images and videos go one per call); ``call`` goes to the pipeline.
    ``sidecar``: what every row's sidecar says about the model (its path and fingerprint, vocoder, dtype…);
    its query, seed and the :data:`SETTINGS` of ``call`` are added per row. ``on_output(output, files)``: called after
    each pipeline call's rows are written, with its CLIPSonicOutput and their files."""
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
        sides = None if sidecar is None else [_sidecar(sidecar, query.kind, items[i // num_samples], out, i, call)
                                              for i in range(rows)]
        files = _save_rows(out, target, videos, save_mel, first_index=start * num_samples, sidecars=sides)
        if on_output is not None:
            on_output(out, files)
        written += files
    return written


def model_sidecar(pipe, model: str | os.PathLike | None, *, fingerprint: str | None = None, clip_model: str | None = None,
                  dtype: str | None = None, vocoder: str | os.PathLike | None = None) -> dict[str, Any]:
    """What every clip's sidecar says about the loaded ``pipe`` (``model`` None: the built-in one) and how it was
    loaded; ``fingerprint``: :func:`clipsonic.export.model_fingerprint` of ``model``, when already computed."""
    return {"model": None if model is None else str(Path(model).resolve()),
            "model_fingerprint": fingerprint or model_fingerprint(model if model is not None else BUILTIN_DIR),
            "clip_model": clip_model, "dtype": dtype,
            "vocoder": vocoder if vocoder in (None, "griffin-lim") else str(Path(vocoder).resolve()),
            "device": str(pipe.device)}


def _sidecar(model: dict[str, Any], kind: str, item: Any, out, row: int, call: dict[str, Any]) -> dict[str, Any]:
    """One row's sidecar: the resolved mode and sampling settings (a default may change between versions; a distilled
    pipeline has its own) and absolute query paths."""
    if kind not in ("text", "image", "video") or not isinstance(item, str | os.PathLike):
        raise ClipsonicError(f"sidecars record text, image-file and video-file queries, not {kind} {type(item).__name__}")
    ran = {name: value for name, value in out.sampling.items() if name in SETTINGS}
    settings = {name: call.get(name) for name in SETTINGS} | {"mode": out.mode} | ran
    if settings["audio"] is not None:
        if not isinstance(settings["audio"], str | os.PathLike):
            raise ClipsonicError("sidecars record audio files, not samples: pass audio as a file path")
        settings["audio"] = str(Path(settings["audio"]).resolve())
    return {"format": SIDECAR_FORMAT, "version": SIDECAR_VERSION, "clipsonic_version": __version__,
            "query": {kind: item if kind == "text" else str(Path(item).resolve())}, "seed": out.seeds[row],
            "settings": settings, "distilled": out.sampling["distilled"], **model}
