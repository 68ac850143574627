"""Caches that make a rerun cheap. A set folder (``audio/pd/w1.5/``) holds ``<key>.wav``, ``manifest.jsonl`` (a
listening-test system) and ``settings.json`` (what shaped the audio; other settings clear the folder). Embeddings
live under ``embeddings/<embedder cache id>/`` by the SHA-1 of the audio file's bytes (or of the text), so
regenerated audio is never matched with stale embeddings."""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from clipsonic.embedders import AudioEmbedder
from clipsonic.errors import ClipsonicError
from clipsonic.files import atomic_output, read_json, write_json_atomic
from clipsonic.media import load_audio

log = logging.getLogger(__name__)

def open_set_dir(folder: Path, settings: dict[str, Any]) -> None:
    """Make ``folder`` hold audio made with ``settings``: clears it when it was made with others."""
    folder.mkdir(parents=True, exist_ok=True)
    path, settings = folder / "settings.json", {"format": "clipsonic-eval-set", "version": 1, **settings}
    if path.is_file():
        with contextlib.suppress(ClipsonicError):  # unreadable: regenerate
            if read_json(path) == settings:
                return
        log.info("%s was generated with other settings; regenerating it", folder)
        for old in folder.iterdir():
            if old.suffix in (".wav", ".jsonl", ".json"):
                old.unlink()
    write_json_atomic(path, settings)


class EmbeddingCache:
    """Embeddings of audio files (``[frames, D]``) and texts (``[D]``), keyed by content hash."""

    def __init__(self, root: Path, embedder: AudioEmbedder):
        self.embedder = embedder
        self.root = Path(root) / embedder.cache_id
        self.hits = self.misses = 0

    def _load_or(self, path: Path, compute: Callable[[], np.ndarray]) -> np.ndarray:
        if path.is_file():
            self.hits += 1
            return np.load(path, allow_pickle=False)
        self.misses += 1
        value = np.asarray(compute(), dtype=np.float32)
        with atomic_output(path) as tmp, open(tmp, "wb") as fh:
            np.save(fh, value, allow_pickle=False)
        return value

    def audio(self, file: Path) -> np.ndarray:
        """Embedding frames of an audio file ``[frames, D]``."""
        digest, rate = hashlib.sha1(file.read_bytes()).hexdigest(), self.embedder.sample_rate
        return self._load_or(self.root / "audio" / digest[:2] / f"{digest}.npy",
                             lambda: self.embedder.embed(load_audio(file, rate), rate))

    def texts(self, texts: Sequence[str]) -> np.ndarray:
        """Text embeddings ``[B, D]`` (CLAP); computed in one batch for those not cached."""
        paths = {t: self.root / "text" / f"{hashlib.sha1(t.encode('utf-8')).hexdigest()}.npy" for t in texts}
        todo = sorted(t for t, p in paths.items() if not p.is_file())
        computed = dict(zip(todo, self.embedder.embed_texts(todo), strict=True))
        return np.stack([self._load_or(paths[t], lambda t=t: computed[t]) for t in texts])
