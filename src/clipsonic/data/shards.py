"""Writing WebDataset shards: ``.{name}.tmp`` renamed to ``{split}-{NNNNNN}.tar`` when complete (readers never
see half a shard); tar headers carry a fixed mtime/owner, so the same samples give the same bytes.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import webdataset as wds


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:06d}.tar"


def encode_sample(key: str, mel: np.ndarray, clip: np.ndarray, meta: dict,
                  jpg: bytes | None = None, flac: bytes | None = None) -> dict[str, bytes | str]:
    """A sample as raw bytes, in dataset.py's layout (mel.npy / clip.npy float16, json, jpg, flac)."""
    sample: dict[str, bytes | str] = {"__key__": key, "mel.npy": _npy(mel.astype(np.float16)),
                                      "clip.npy": _npy(clip.astype(np.float16)),
                                      "json": json.dumps(meta, sort_keys=True).encode()}
    return sample | {name: data for name, data in (("jpg", jpg), ("flac", flac)) if data is not None}


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


class ShardWriter:
    """Size-capped shards of one split, finalised atomically; ``on_finalize(name, clips)`` is called after each rename."""

    def __init__(self, root: Path, split: str, first_index: int, max_bytes: int, on_finalize=None):
        self.root, self.split, self.index, self.max_bytes = Path(root), split, first_index, max_bytes
        self.on_finalize = on_finalize
        self._tar = self._fh = self._tmp = None
        self.samples_in_shard = self.bytes_in_shard = 0

    def write(self, sample: dict) -> None:
        if self._tar is None:
            self._tmp = self.root / f".{shard_name(self.split, self.index)}.tmp"
            self._fh = open(self._tmp, "wb")
            # fixed mtime/owner: same samples → same bytes (reproducible and resumable)
            self._tar = wds.TarWriter(self._fh, encoder=False, mtime=0.0, user="clipsonic", group="clipsonic")
        self.bytes_in_shard += self._tar.write(sample)
        self.samples_in_shard += 1

    @property
    def full(self) -> bool:
        return self._tar is not None and self.bytes_in_shard >= self.max_bytes

    def finalize(self) -> str | None:
        """Close and rename the open shard; returns its name (None when nothing was open)."""
        if self._tar is None:
            return None
        self._tar.close()
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        name = shard_name(self.split, self.index)
        os.replace(self._tmp, self.root / name)
        clips = self.samples_in_shard
        self._tar = self._fh = self._tmp = None
        self.index += 1
        self.samples_in_shard = self.bytes_in_shard = 0
        if self.on_finalize is not None:
            self.on_finalize(name, clips)
        return name

    def abort(self) -> None:
        """Drop the open shard (its samples will be rewritten by the next run)."""
        if self._tar is not None:
            self._fh.close()
            self._tmp.unlink(missing_ok=True)
            self._tar = self._fh = self._tmp = None


def remove_stale_temporaries(root: Path) -> int:
    """Delete half-written files (shards, journal, json) left by a killed run; returns how many."""
    stale = list(Path(root).glob(".*.tmp"))
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)
