"""Caches that make a rerun cheap: generated audio per set, embeddings per audio file and text.

- A set folder (``audio/pd/w1.5/``) holds ``<key>.wav``, ``manifest.jsonl`` (file, item, query:
  what ``listening-test make`` reads) and ``settings.json`` (everything that shaped the audio:
  model fingerprint, mode, w, steps, sampler, seed, template). Files are reused only while the
  settings are the same; other settings clear the folder.
- Embeddings are stored under ``embeddings/<embedder cache id>/`` by the SHA-1 of the audio
  file's bytes (or of the text), so another metric reuses the audio and regenerated audio is
  never matched with stale embeddings.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from clipsonic.embedders import AudioEmbedder, TextAudioEmbedder
from clipsonic.files import write_bytes_atomic, write_json_atomic

log = logging.getLogger(__name__)

SETTINGS = "settings.json"
MANIFEST = "manifest.jsonl"


def open_set_dir(folder: Path, settings: dict[str, Any]) -> None:
    """Make ``folder`` hold audio made with ``settings``: clears it when it was made with others."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / SETTINGS
    if path.is_file():
        try:
            previous = json.loads(path.read_text())
        except json.JSONDecodeError:
            previous = None
        if previous == settings:
            return
        log.info("%s was generated with other settings; regenerating it", folder)
        for old in folder.iterdir():
            if old.suffix in (".wav", ".jsonl", ".json"):
                old.unlink()
    write_json_atomic(path, settings)


def write_manifest(folder: Path, entries: Sequence[dict[str, str]]) -> None:
    """``manifest.jsonl``: one ``{"file", "item", "query"}`` per audio file (the listening-test input)."""
    text = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries)
    write_bytes_atomic(folder / MANIFEST, text.encode("utf-8"))


def _digest(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


class EmbeddingCache:
    """Embeddings of audio files (``[frames, D]``) and texts (``[D]``), keyed by content hash."""

    def __init__(self, root: Path, embedder: AudioEmbedder):
        self.embedder = embedder
        self.root = Path(root) / embedder.cache_id
        self.hits = 0
        self.misses = 0

    def _load_or(self, path: Path, compute) -> np.ndarray:
        if path.is_file():
            self.hits += 1
            return np.load(path, allow_pickle=False)
        self.misses += 1
        value = np.asarray(compute(), dtype=np.float32)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npy")
        np.save(tmp, value, allow_pickle=False)
        os.replace(tmp, path)
        return value

    def audio(self, file: Path) -> np.ndarray:
        """Embedding frames of an audio file ``[frames, D]``."""
        data = file.read_bytes()
        digest = _digest(data)

        def compute() -> np.ndarray:
            import io

            import soundfile

            wav, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=False)
            if wav.ndim == 2:
                wav = wav.mean(axis=1)
            return self.embedder.embed(wav, rate)

        return self._load_or(self.root / "audio" / digest[:2] / f"{digest}.npy", compute)

    def texts(self, texts: Sequence[str]) -> np.ndarray:
        """Text embeddings ``[B, D]`` (CLAP); computed in one batch for those not cached."""
        if not isinstance(self.embedder, TextAudioEmbedder):
            raise TypeError(f"{self.embedder.name} does not embed texts")
        paths = [self.root / "text" / f"{_digest(t.encode('utf-8'))}.npy" for t in texts]
        todo = sorted({t for t, p in zip(texts, paths, strict=True) if not p.is_file()})
        if todo:
            for text, emb in zip(todo, self.embedder.embed_texts(todo), strict=True):
                self._load_or(self.root / "text" / f"{_digest(text.encode('utf-8'))}.npy", lambda e=emb: e)
        return np.stack([self._load_or(p, lambda: None) for p in paths])
