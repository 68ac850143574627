"""The dataset directory contract: ``dataset.json`` + WebDataset shards.

``dataset.json`` (format "clipsonic-dataset", version 1) holds ``mel`` (the MelConfig), ``clip`` (``model``,
``dim``, ``fingerprint``), ``frames_per_clip``, ``splits`` (``{split: {"shards": [names], "clips": n}}``),
``counts`` (inputs, clips, rejected, silent_clips, padded_clips, dropped_tails), ``options`` (the preprocess options
that shape the data) and ``rejected`` (``[{"path", "reason"}]``: inputs that gave no clip).

Per sample in a shard: ``__key__``; ``mel.npy`` float16 ``[n_mels, frames]`` log-mel; ``clip.npy`` float16
``[K, D]`` L2-normalised image embeddings; ``json`` (source, start, frame times, label, split); optional ``flac``
(16 kHz clip audio) and ``jpg`` (middle frame); with a frame rate (``options.clips.frame_rate``, see
:attr:`DatasetInfo.frame_rate`), ``seq.npy`` float16 ``[N, D]``, the embeddings of N frames aligned to the mel
(frame i covers mel frames ``[i·F/N, (i+1)·F/N)``; times in the json's ``seq_times``). A shard is written as ``.{name}.tmp`` and renamed to
``{split}-{NNNNNN}.tar`` when complete (readers never see half a shard); tar headers carry a fixed mtime/owner,
so the same samples give the same bytes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import webdataset as wds

from clipsonic.audio import MelConfig
from clipsonic.encoders import ClipModelRef
from clipsonic.errors import ClipsonicError
from clipsonic.files import inside, read_versioned_json, safe_name, write_json_atomic

FORMAT = "clipsonic-dataset"
VERSION = 1


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """Parsed ``dataset.json`` of a dataset directory."""

    root: Path
    mel: MelConfig
    clip: ClipModelRef
    frames_per_clip: int
    splits: dict[str, dict[str, Any]]
    counts: dict[str, int]
    options: dict[str, Any]
    rejected: list[dict[str, str]] = dataclasses.field(default_factory=list)

    def shard_paths(self, split: str) -> list[Path]:
        if split not in self.splits:
            raise ClipsonicError(f"{self.root}: no '{split}' split (has {sorted(self.splits) or 'none'}); "
                                 "re-run preprocess with a --test-fraction or choose another split")
        # names come from dataset.json: they must stay inside the dataset folder
        return [inside(self.root, name, f"{self.root}/dataset.json: shard") for name in self.splits[split]["shards"]]

    @property
    def frame_rate(self) -> float | None:
        """Frames per second of each clip's ``seq.npy`` sequence; None for a dataset without sequences."""
        return self.options.get("options", {}).get("clips", {}).get("frame_rate")

    def num_clips(self, split: str) -> int:
        return int(self.splits.get(split, {}).get("clips", 0))

    def save(self) -> None:
        write_json_atomic(self.root / "dataset.json", {
            "format": FORMAT, "version": VERSION, "mel": self.mel.to_dict(), "clip": self.clip.to_dict(),
            "frames_per_clip": self.frames_per_clip, "splits": self.splits, "counts": self.counts,
            "options": self.options, "rejected": self.rejected})

    def check_compatible(self, mel: MelConfig, clip_dim: int | None = None, clip_model: str | None = None,
                         what: str = "the model") -> None:
        """Refuse a dataset whose mel config or CLIP model differs from the consumer's, naming both."""
        diffs = self.mel.mismatch(mel)
        if diffs:
            raise ClipsonicError(f"{self.root} was built with a different mel config than {what} expects "
                                 f"({'; '.join(diffs)}); re-run preprocess with {what}'s mel config or train a "
                                 "new model")
        if clip_dim is not None and clip_dim != self.clip.dim:
            raise ClipsonicError(f"{self.root} was built with {self.clip.describe()} but {what} expects {clip_dim}-d "
                                 f"embeddings{f' from {clip_model}' if clip_model else ''}; re-run preprocess with "
                                 f"--clip-model {clip_model or '<that model>'}")
        if clip_model is not None and clip_model != self.clip.model and clip_model != self.clip.fingerprint:
            raise ClipsonicError(f"{self.root} was built with {self.clip.describe()} but {what} uses {clip_model}; "
                                 f"re-run preprocess with --clip-model {clip_model}")


def read_dataset_info(root: str | os.PathLike) -> DatasetInfo:
    """Read and validate ``root/dataset.json``; a clear :class:`ClipsonicError` when it is not a dataset."""
    root = Path(root)
    path = root / "dataset.json"
    if not path.is_file():
        raise ClipsonicError(f"{root} is not a clipsonic dataset (no dataset.json); build one with "
                             "`clipsonic preprocess`")
    data = read_versioned_json(path, FORMAT, VERSION)
    _check_splits(path, data.get("splits"))
    try:
        return DatasetInfo(
            root=root, mel=MelConfig.from_dict(data["mel"], source=f"{path}:mel"),
            clip=ClipModelRef.from_dict(data["clip"], source=f"{path}:clip"),
            frames_per_clip=int(data["frames_per_clip"]), splits=data["splits"],
            counts=data.get("counts", {}), options=data.get("options", {}), rejected=data.get("rejected", []))
    except (KeyError, TypeError) as exc:
        raise ClipsonicError(f"{path}: malformed dataset.json ({exc!r}); re-run preprocess") from None


def _check_splits(path: Path, splits: Any) -> None:
    """``splits`` must be ``{plain name: {"shards": [names], "clips": n}}``: split names become file names."""
    ok = isinstance(splits, dict) and all(
        isinstance(v, dict) and isinstance(v.get("shards"), list) and all(isinstance(n, str) for n in v["shards"])
        and isinstance(v.get("clips", 0), int) and safe_name(k) == k for k, v in splits.items())
    if not ok:
        raise ClipsonicError(f"{path}: malformed 'splits' (expected {{plain name: {{\"shards\": [file names], "
                             "\"clips\": n}}}}); re-run preprocess")


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:06d}.tar"


def encode_sample(key: str, mel: np.ndarray, clip: np.ndarray, meta: dict, jpg: bytes | None = None,
                  flac: bytes | None = None, seq: np.ndarray | None = None) -> dict[str, bytes | str]:
    """A sample as raw bytes, in the layout above (mel.npy / clip.npy / seq.npy float16, json, jpg, flac)."""
    sample: dict[str, bytes | str] = {"__key__": key, "mel.npy": _npy(mel.astype(np.float16)),
                                      "clip.npy": _npy(clip.astype(np.float16)),
                                      "json": json.dumps(meta, sort_keys=True).encode()}
    if seq is not None:
        sample["seq.npy"] = _npy(seq.astype(np.float16))
    return sample | {name: data for name, data in (("jpg", jpg), ("flac", flac)) if data is not None}


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


class ShardWriter:
    """Size-capped shards of one split, each renamed into place whole by :meth:`finalize`."""

    def __init__(self, root: Path, split: str, first_index: int, max_bytes: int):
        self.root, self.split, self.index, self.max_bytes = Path(root), split, first_index, max_bytes
        self._tar = self._fh = self._tmp = None
        self.bytes_in_shard = 0

    def write(self, sample: dict) -> None:
        if self._tar is None:
            self._tmp = self.root / f".{shard_name(self.split, self.index)}.tmp"
            self._fh = open(self._tmp, "wb")
            # fixed mtime/owner: same samples → same bytes (reproducible and resumable)
            self._tar = wds.TarWriter(self._fh, encoder=False, mtime=0.0, user="clipsonic", group="clipsonic")
        self.bytes_in_shard += self._tar.write(sample)

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
        self._tar = self._fh = self._tmp = None
        self.index += 1
        self.bytes_in_shard = 0
        return name

    def abort(self) -> None:
        """Drop the open shard (its samples will be rewritten by the next run)."""
        if self._tar is not None:
            # closing the tar marks its stream closed (else its __del__ writes to the closed file); on a full disk
            # both closes fail again, and the error being raised already says so
            with contextlib.suppress(OSError, ValueError):
                try:
                    self._tar.close()
                finally:
                    self._fh.close()
            self._tmp.unlink(missing_ok=True)
            self._tar = self._fh = self._tmp = None
