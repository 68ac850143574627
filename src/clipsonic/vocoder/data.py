"""Training audio for the vocoder: a dataset's ``flac`` clips, streamed by ``clipsonic.data.loader``, or a folder.

Each rank cuts one random segment (start drawn from ``(seed, epoch, key)``) from each clip of its seeded
per-epoch order. Its position ``(epoch, clips taken in that epoch)`` resumes exactly, decoding nothing skipped.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from clipsonic.data.dataset import read_dataset_info
from clipsonic.data.loader import StreamLayout, decode_flac, epoch_samples, iter_raw_samples
from clipsonic.errors import ClipsonicError
from clipsonic.media import MediaError, load_audio, probe

log = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".aiff", ".aif", ".m4a")
SHUFFLE_BUFFER = 256  # dataset clips mixed across a shard, which holds a video's clips side by side


@dataclasses.dataclass(frozen=True)
class Clip:
    """One piece of training audio: a file of ``num_samples`` samples, or a shard sample's flac bytes."""

    key: str
    path: Path | None = None
    num_samples: int = 0
    flac: bytes | None = None

    def segment(self, length: int, sample_rate: int, rng: np.random.Generator | None = None) -> np.ndarray:
        """float32 ``[length]`` from a random start (the middle without ``rng``), zero-padded past the end."""
        whole = decode_flac(self.flac, sample_rate, self.key) if self.flac is not None else None
        span = max((self.num_samples if whole is None else len(whole)) - length, 0)
        start = span // 2 if rng is None else int(rng.integers(0, span + 1))
        if whole is not None:
            wav = whole[start:start + length]
        else:
            wav = load_audio(self.path, sample_rate, start / sample_rate, length / sample_rate, pad_end=True)
        if not np.isfinite(wav).all():
            raise ClipsonicError(f"{self.key}: audio contains NaN or infinite samples; remove or repair the file")
        return np.pad(wav, (0, length - len(wav)))


def _num_held_out(num_clips: int, num_val: int) -> int:
    return max(1, min(num_val, num_clips // 10)) if num_clips >= 10 else 0


class AudioCorpus:
    """Training clips (streamed per epoch) and fixed validation clips of a dataset directory or an audio folder.

    Training: a dataset's train split only. Validation: its valid/val/test split when it has one; else a tenth of
    the clips (1 to ``num_val``) held out when there are at least 10 (a folder's drawn from the seed, a dataset's the
    first ones); else none, and :func:`validation_audio` cuts seeded segments of the training clips."""

    def __init__(self, data: str | Path, sample_rate: int, num_val: int, seed: int) -> None:
        root = Path(data)
        if not root.is_dir():
            raise ClipsonicError(f"{root}: not a directory (give a dataset directory or a folder of audio files)")
        self.sample_rate, self.skipped = sample_rate, []
        self.files: list[Clip] = []
        self.shards: tuple[str, ...] = ()
        if (root / "dataset.json").is_file():
            self._open_dataset(root, num_val)
        else:
            self._open_folder(root, num_val, seed)
        self.held = {c.key for c in self.val}

    def _open_dataset(self, root: Path, num_val: int) -> None:
        info = read_dataset_info(root)  # its sample rate is the vocoder's: train_vocoder takes the dataset's mel
        val_split = next((s for s in ("valid", "val", "validation", "test") if info.num_clips(s)), None)
        train = [s for s in info.splits if s == "train"]  # never the test clips, whatever validates
        self.shards = tuple(str(p) for s in train for p in info.shard_paths(s))
        if not self.shards:
            raise ClipsonicError(f"{root}: no training shards (splits: {', '.join(info.splits) or 'none'}, "
                                 f"{val_split or 'none'} held out for validation); re-run preprocess")
        first = next(iter_raw_samples(self.shards[:1], fields=(), optional=("flac",)), {})
        if "flac" not in first:
            raise ClipsonicError(f"{root}: its clips store no audio (flac); "
                                 "re-run `clipsonic preprocess` with --keep-audio")
        self.num_train = sum(info.num_clips(s) for s in train)
        source = info.shard_paths(val_split) if val_split else self.shards
        count = num_val if val_split else _num_held_out(self.num_train, num_val)
        self.val = [Clip(s["__key__"], flac=s["flac"])
                    for s in itertools.islice(iter_raw_samples(source, fields=("flac",)), count)]
        self.num_train -= 0 if val_split else len(self.val)
        self.clip_samples, self.name = info.mel.clip_samples, f"dataset {root}"

    def _open_folder(self, root: Path, num_val: int, seed: int) -> None:
        for path in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES):
            key = str(path.relative_to(root))
            try:
                n = round(probe(path).duration * self.sample_rate)
                head = load_audio(path, self.sample_rate, duration=min(n, self.sample_rate) / self.sample_rate,
                                  pad_end=True) if n > 0 else None
            except MediaError as exc:
                self.skipped.append((key, str(exc).removeprefix(f"{path}: ")))
                continue
            if head is None or not np.isfinite(head).all():
                self.skipped.append((key, "contains no audio" if head is None else "contains NaN or infinite samples"))
                continue
            self.files.append(Clip(key, path=path, num_samples=n))
        if not self.files:
            reasons = "; ".join(f"{k}: {r}" for k, r in self.skipped[:3])
            raise ClipsonicError(f"{root}: no usable audio files ({len(self.skipped)} unreadable"
                                 f"{': ' + reasons if reasons else ''}); expected {', '.join(AUDIO_SUFFIXES)} files")
        order = np.random.default_rng(seed).permutation(len(self.files))
        held = set(order[:_num_held_out(len(self.files), num_val)].tolist())
        self.val = [c for i, c in enumerate(self.files) if i in held]
        self.files = [c for i, c in enumerate(self.files) if i not in held]
        self.num_train, self.name = len(self.files), f"folder {root}"

    def count_short(self, segment_size: int) -> int:
        if self.shards:
            return self.num_train if self.clip_samples < segment_size else 0
        return sum(c.num_samples < segment_size for c in self.files)

    def clips(self, epoch: int, seed: int, rank: int = 0, world_size: int = 1) -> Iterator[Clip | None]:
        """This rank's clips of one epoch in their seeded order (None: a held-out clip, which still counts)."""
        if not self.shards:
            order = np.random.default_rng([seed, epoch]).permutation(len(self.files))
            yield from (self.files[i] for i in order[rank::world_size])
            return
        layout = StreamLayout(self.shards, 1, seed, rank, world_size, num_workers=0, shuffle_buffer=SHUFFLE_BUFFER)
        for raw in epoch_samples(layout, 0, epoch, fields=("flac",)):
            yield None if raw["__key__"] in self.held else Clip(raw["__key__"], flac=raw["flac"])


def training_batches(corpus: AudioCorpus, batch_size: int, segment_size: int, seed: int, *, rank: int = 0,
                     world_size: int = 1, epoch: int = 0, offset: int = 0,
                     num_workers: int = 0) -> Iterator[dict]:
    """Endless ``{"audio": [B, segment_size] float32, "epoch", "offset"}`` from position ``(epoch, offset)``.

    ``epoch``/``offset`` of a batch are the position after it; ``num_workers`` threads decode each batch."""
    def cut(clip: Clip, clip_epoch: int) -> np.ndarray:
        rng = np.random.default_rng([seed, clip_epoch, zlib.crc32(clip.key.encode())])
        return clip.segment(segment_size, corpus.sample_rate, rng)

    pending: list[tuple[Clip, int]] = []
    with ThreadPoolExecutor(num_workers) if num_workers > 0 else nullcontext() as pool:
        while True:
            i = -1
            for i, clip in enumerate(corpus.clips(epoch, seed, rank, world_size)):
                if i >= offset and clip is not None:
                    pending.append((clip, epoch))
                if len(pending) == batch_size:  # each batch is decoded whole before it is yielded
                    audio = list((pool.map if pool else map)(cut, *zip(*pending, strict=True)))
                    yield {"audio": torch.from_numpy(np.stack(audio)), "epoch": epoch, "offset": i + 1}
                    pending = []
            if i < 0:
                raise ClipsonicError(f"rank {rank} of {world_size} got no training clips in epoch {epoch}: "
                                     "there are fewer clips (or shards) than processes")
            epoch, offset = epoch + 1, 0


def validation_audio(corpus: AudioCorpus, length: int, count: int, seed: int) -> torch.Tensor:
    """Fixed validation audio ``[V, length]``: the middle of each held-out clip, or seeded segments
    of the training clips when nothing is held out."""
    if corpus.val:
        return torch.from_numpy(np.stack([c.segment(length, corpus.sample_rate) for c in corpus.val[:count]]))
    log.warning("validating on segments of the training audio (fewer than 10 clips, no validation split)")
    return next(training_batches(corpus, count, length, seed + 1))["audio"]
