"""The dataset directory contract: ``dataset.json`` + WebDataset shards + ``rejected.jsonl``.

``dataset.json`` (format version 1)::

    {"format": "clipsonic-dataset", "version": 1,
     "mel": {...MelConfig...},
     "clip": {"model": "openai/clip-vit-large-patch14", "dim": 768, "fingerprint": "ab12…"},
     "frames_per_clip": 3,
     "splits": {"train": {"shards": ["train-000000.tar", …], "clips": 1234}, "test": {…}},
     "counts": {"inputs": 100, "clips": 1300, "rejected": 3},
     "options": {…preprocess options that shape the data…}}

Per sample in a shard: ``__key__``; ``mel.npy`` float16 ``[n_mels, frames]`` log-mel;
``clip.npy`` float16 ``[K, D]`` L2-normalised image embeddings; ``json`` (source, start, frame
times, label, split); optional ``flac`` (16 kHz clip audio) and ``jpg`` (middle frame).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from clipsonic.audio import MelConfig
from clipsonic.errors import ClipsonicError

FORMAT = "clipsonic-dataset"
VERSION = 1


class DatasetError(ClipsonicError):
    """A dataset directory is missing, malformed, or incompatible with a model."""


@dataclasses.dataclass(frozen=True)
class ClipModelRef:
    """Which CLIP produced the embeddings: the id/path, its dimension and a weights fingerprint."""

    model: str
    dim: int
    fingerprint: str

    def describe(self) -> str:
        return f"{self.model} ({self.dim}-d, weights {self.fingerprint[:12]})"


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

    def shard_paths(self, split: str) -> list[Path]:
        if split not in self.splits:
            raise DatasetError(
                f"{self.root}: no '{split}' split (has {sorted(self.splits) or 'none'}); "
                "re-run preprocess with a --test-fraction or choose another split"
            )
        return [self.root / name for name in self.splits[split]["shards"]]

    def num_clips(self, split: str) -> int:
        return int(self.splits.get(split, {}).get("clips", 0))

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "mel": self.mel.to_dict(),
            "clip": dataclasses.asdict(self.clip),
            "frames_per_clip": self.frames_per_clip,
            "splits": self.splits,
            "counts": self.counts,
            "options": self.options,
        }

    def check_compatible(self, mel: MelConfig, clip_dim: int | None = None, clip_model: str | None = None,
                         what: str = "the model") -> None:
        """Refuse a dataset whose mel config or CLIP model differs from the consumer's, naming both."""
        diffs = self.mel.mismatch(mel)
        if diffs:
            raise DatasetError(
                f"{self.root} was built with a different mel config than {what} expects "
                f"({'; '.join(diffs)}); re-run preprocess with {what}'s mel config or train a new model"
            )
        if clip_dim is not None and clip_dim != self.clip.dim:
            raise DatasetError(
                f"{self.root} was built with {self.clip.describe()} but {what} expects {clip_dim}-d "
                f"embeddings{f' from {clip_model}' if clip_model else ''}; re-run preprocess with "
                f"--clip-model {clip_model or '<that model>'}"
            )
        if clip_model is not None and clip_model != self.clip.model and clip_model != self.clip.fingerprint:
            raise DatasetError(
                f"{self.root} was built with {self.clip.describe()} but {what} uses {clip_model}; "
                f"re-run preprocess with --clip-model {clip_model}"
            )


def read_dataset_info(root: str | os.PathLike) -> DatasetInfo:
    """Read and validate ``root/dataset.json``; a clear :class:`DatasetError` when it is not a dataset."""
    root = Path(root)
    path = root / "dataset.json"
    if not path.is_file():
        raise DatasetError(f"{root} is not a clipsonic dataset (no dataset.json); build one with `clipsonic preprocess`")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path} is not valid JSON ({exc}); re-run preprocess") from None
    if data.get("format") != FORMAT or data.get("version") != VERSION:
        raise DatasetError(
            f"{path}: unsupported dataset format {data.get('format')!r} v{data.get('version')!r} "
            f"(this clipsonic reads {FORMAT} v{VERSION})"
        )
    try:
        return DatasetInfo(
            root=root,
            mel=MelConfig.from_dict(data["mel"], source=f"{path}:mel"),
            clip=ClipModelRef(**data["clip"]),
            frames_per_clip=int(data["frames_per_clip"]),
            splits=data["splits"],
            counts=data.get("counts", {}),
            options=data.get("options", {}),
        )
    except (KeyError, TypeError) as exc:
        raise DatasetError(f"{path}: malformed dataset.json ({exc!r}); re-run preprocess") from None
