"""Caches that make a rerun cheap. A set folder (``audio/pd/w1.5/``) holds ``<key>.wav``, ``manifest.jsonl`` (a
listening-test system), ``settings.json`` (what shaped the audio; other settings clear the folder) and
``checksums.json`` (each wav's size and SHA-256, recorded after it is written: a wav that does not match, truncated
or changed since, is regenerated). Embeddings live under ``embeddings/<embedder cache id>/`` by the SHA-1 of the
audio file's bytes (or of the text), so regenerated audio is never matched with stale embeddings; an unreadable
one is computed again."""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from clipsonic.embedders import AudioEmbedder
from clipsonic.errors import ClipsonicError
from clipsonic.files import atomic_output, read_json, write_json_atomic
from clipsonic.media import load_audio

log = logging.getLogger(__name__)
CHECKSUMS = "checksums.json"


def open_set_dir(folder: Path, settings: dict[str, Any]) -> None:
    """Make ``folder`` hold audio made with ``settings``: clears it when it was made with others."""
    folder.mkdir(parents=True, exist_ok=True)
    path, settings = folder / "settings.json", {"format": "clipsonic-eval-set", "version": 2, **settings}
    if path.is_file():
        with contextlib.suppress(ClipsonicError):  # unreadable: regenerate
            if read_json(path) == settings:
                return
        log.info("%s was generated with other settings; regenerating it", folder)
        for old in folder.iterdir():
            if old.suffix in (".wav", ".jsonl", ".json"):
                old.unlink()
    write_json_atomic(path, settings)


def _checksum(path: Path) -> list:
    return [path.stat().st_size, hashlib.sha256(path.read_bytes()).hexdigest()]


def _recorded(folder: Path) -> dict[str, Any]:
    try:
        data = read_json(folder / CHECKSUMS, "checksums file") if (folder / CHECKSUMS).is_file() else {}
    except ClipsonicError as exc:
        log.warning("%s; regenerating the audio of %s", exc, folder)
        data = {}
    return data if isinstance(data, dict) else {}


def verified_wavs(folder: Path) -> set[str]:
    """Names of the wavs in ``folder`` that match their recorded size and SHA-256; the others are removed (with one
    warning): a wav cut short by a full disk or changed by hand would otherwise silently change every score."""
    recorded, good, bad = _recorded(folder), set(), []
    for wav in folder.glob("*.wav"):
        want = recorded.get(wav.name)
        if isinstance(want, list) and want[:1] == [wav.stat().st_size] and _checksum(wav) == want:
            good.add(wav.name)
        else:
            bad.append(wav)
    if bad:
        log.warning("%s: %d cached wav(s) do not match their recorded size and SHA-256 (truncated, changed or "
                    "never recorded, e.g. %s); regenerating them", folder, len(bad), bad[0].name)
        for wav in bad:
            wav.unlink()
    return good


def record_wavs(folder: Path, wavs: Iterable[Path]) -> None:
    """Add the size and SHA-256 of ``wavs`` (just written) to the folder's ``checksums.json``."""
    recorded = _recorded(folder)
    write_json_atomic(folder / CHECKSUMS, {**recorded, **{w.name: _checksum(w) for w in wavs}})


class EmbeddingCache:
    """Embeddings of audio files (``[frames, D]``) and texts (``[D]``), keyed by content hash."""

    def __init__(self, root: Path, embedder: AudioEmbedder):
        self.embedder = embedder
        self.root = Path(root) / embedder.cache_id
        self.hits = self.misses = 0

    def _load_or(self, path: Path, ndim: int, compute: Callable[[], np.ndarray]) -> np.ndarray:
        if path.is_file():
            try:
                value = np.load(path, allow_pickle=False)
                if value.dtype != np.float32 or value.ndim != ndim or value.shape[-1] != self.embedder.dim:
                    raise ValueError(f"{value.dtype} {value.shape}, expected float32 with {self.embedder.dim} columns")
                self.hits += 1
                return value
            except (OSError, EOFError, ValueError) as exc:  # truncated or foreign file: computed again
                log.warning("%s: damaged cached embedding (%s); computing it again", path, exc)
        self.misses += 1
        value = np.asarray(compute(), dtype=np.float32)
        with atomic_output(path) as tmp, open(tmp, "wb") as fh:
            np.save(fh, value, allow_pickle=False)
        return value

    def audio(self, file: Path) -> np.ndarray:
        """Embedding frames of an audio file ``[frames, D]``."""
        digest, rate = hashlib.sha1(file.read_bytes()).hexdigest(), self.embedder.sample_rate
        return self._load_or(self.root / "audio" / digest[:2] / f"{digest}.npy", 2,
                             lambda: self.embedder.embed(load_audio(file, rate), rate))

    def texts(self, texts: Sequence[str]) -> np.ndarray:
        """Text embeddings ``[B, D]`` (CLAP); computed in one batch for those not cached."""
        paths = {t: self.root / "text" / f"{hashlib.sha1(t.encode('utf-8')).hexdigest()}.npy" for t in texts}
        todo = sorted(t for t, p in paths.items() if not p.is_file())
        computed = dict(zip(todo, self.embedder.embed_texts(todo), strict=True)) if todo else {}
        return np.stack([self._load_or(paths[t], 1, lambda t=t: self._text(t, computed)) for t in texts])

    def _text(self, text: str, computed: dict[str, np.ndarray]) -> np.ndarray:
        """``computed[text]``, or embedded now (its cached file was damaged)."""
        return computed[text] if text in computed else self.embedder.embed_texts([text])[0]
