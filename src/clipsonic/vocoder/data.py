"""Training audio for the vocoder: a dataset directory's ``flac`` clips or a folder of audio files.

Segments are drawn deterministically from a global sample index ``n``: the file (chosen in
proportion to its length) and the offset come from ``numpy.random.default_rng([seed, n])``.
So batch ``s`` is the same whatever happened before it — which is what makes a resumed run
identical to an uninterrupted one, on any number of processes and data-loader workers.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from clipsonic.vocoder.audio_io import AUDIO_SUFFIXES, AudioInfo, probe_audio, read_segment
from clipsonic.vocoder.base import VocoderError

log = logging.getLogger(__name__)

VALIDATION_SPLITS = ("valid", "val", "validation", "test")


@dataclasses.dataclass(frozen=True)
class AudioItem:
    """One source of training audio: a file on disk or a clip's flac bytes from a shard."""

    name: str
    num_samples: int  # at the training sample rate
    path: Path | None = None
    info: AudioInfo | None = None
    flac: bytes | None = None

    def read(self, start: int, length: int, sample_rate: int) -> np.ndarray:
        """float32 ``[length]`` from ``start`` (zero-padded past the end); rejects NaN/inf samples."""
        if self.flac is not None:
            wav = _decode_flac(self.flac, sample_rate, self.name)[start:start + length]
            wav = np.pad(wav, (0, length - len(wav))) if len(wav) < length else wav
        else:
            wav = read_segment(self.path, self.info, sample_rate, start, length)
        if not np.isfinite(wav).all():
            raise VocoderError(f"{self.name}: audio contains NaN or infinite samples; remove or repair the file")
        return wav


@dataclasses.dataclass
class AudioCorpus:
    """Training and validation items plus what was skipped or padded, for the log."""

    train: list[AudioItem]
    val: list[AudioItem]
    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (name, reason)
    source: str = ""

    def count_short(self, segment_size: int) -> int:
        return sum(item.num_samples < segment_size for item in self.train)


def _decode_flac(payload: bytes, sample_rate: int, name: str) -> np.ndarray:
    import soundfile as sf

    try:
        data, sr = sf.read(io.BytesIO(payload), dtype="float32", always_2d=True)
    except Exception as exc:
        raise VocoderError(f"{name}: flac not decodable ({exc})") from None
    wav = data.mean(axis=1)
    if sr != sample_rate:
        import soxr

        wav = soxr.resample(wav, sr, sample_rate).astype(np.float32)
    return wav


def scan_audio_folder(root: Path, sample_rate: int) -> tuple[list[AudioItem], list[tuple[str, str]]]:
    """Every readable audio file under ``root`` (recursively, sorted); the others with a reason."""
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
    items, skipped = [], []
    for path in files:
        name = str(path.relative_to(root))
        try:
            info = probe_audio(path)
            head = read_segment(path, info, sample_rate, 0, min(info.samples_at(sample_rate), sample_rate))
        except VocoderError as exc:
            skipped.append((name, str(exc)))
            continue
        if not np.isfinite(head).all():
            skipped.append((name, "contains NaN or infinite samples"))
            continue
        items.append(AudioItem(name, info.samples_at(sample_rate), path=path, info=info))
    return items, skipped


def read_dataset_audio(root: Path, sample_rate: int) -> tuple[dict[str, list[AudioItem]], int]:
    """``flac`` clips of every split of a dataset directory (via webdataset); and how many lacked one."""
    import webdataset as wds

    from clipsonic.data.dataset import read_dataset_info

    info = read_dataset_info(root)
    if info.mel.sample_rate != sample_rate:
        raise VocoderError(f"{root} holds {info.mel.sample_rate} Hz audio but the vocoder is for {sample_rate} Hz")
    splits: dict[str, list[AudioItem]] = {}
    missing = 0
    for split in info.splits:
        urls = [str(p) for p in info.shard_paths(split) if p.is_file()]
        items = []
        for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False) if urls else []:
            payload = sample.get("flac")
            if payload is None:
                missing += 1
                continue
            frames = _flac_frames(payload)
            items.append(AudioItem(f"{split}/{sample['__key__']}", frames, flac=bytes(payload)))
        splits[split] = items
    return splits, missing


def _flac_frames(payload: bytes) -> int:
    import soundfile as sf

    return int(sf.info(io.BytesIO(payload)).frames)


def open_corpus(data: str | os.PathLike, sample_rate: int, num_val: int, seed: int) -> AudioCorpus:
    """Training + validation audio from a dataset directory or a folder of audio files.

    Validation: a dataset's valid/val/test split when it has one; otherwise up to ``num_val``
    held-out files when there are at least 10, else (tiny corpora) segments of the training files.
    """
    root = Path(data)
    if not root.is_dir():
        raise VocoderError(f"{root}: not a directory (give a dataset directory or a folder of audio files)")
    if (root / "dataset.json").is_file():
        splits, missing = read_dataset_audio(root, sample_rate)
        if not any(splits.values()):
            raise VocoderError(
                f"{root}: no clip has its audio (flac) stored ({missing} clips without); "
                "re-run `clipsonic preprocess` with --keep-audio"
            )
        val_name = next((s for s in VALIDATION_SPLITS if splits.get(s)), None)
        train = [it for s, items in splits.items() if s != val_name for it in items]
        val = splits[val_name] if val_name else []
        skipped = [("(clips)", f"{missing} clips stored no flac audio")] if missing else []
        corpus = AudioCorpus(train, val, skipped, source=f"dataset {root}")
    else:
        items, skipped = scan_audio_folder(root, sample_rate)
        if not items:
            reasons = "; ".join(f"{n}: {r}" for n, r in skipped[:3])
            raise VocoderError(
                f"{root}: no usable audio files ({len(skipped)} unreadable{': ' + reasons if reasons else ''}); "
                f"expected {', '.join(AUDIO_SUFFIXES)} files"
            )
        corpus = AudioCorpus(items, [], skipped, source=f"folder {root}")
    if not corpus.val and len(corpus.train) >= 10:
        order = np.random.default_rng(seed).permutation(len(corpus.train))
        held = set(order[: max(1, min(num_val, len(corpus.train) // 10))].tolist())
        corpus.val = [it for i, it in enumerate(corpus.train) if i in held]
        corpus.train = [it for i, it in enumerate(corpus.train) if i not in held]
    if not corpus.train:
        raise VocoderError(f"{root}: no training audio left after setting validation aside")
    return corpus


class SegmentDataset(torch.utils.data.Dataset):
    """Global sample index ``n`` → a random float32 segment ``[segment_size]`` (see module doc)."""

    def __init__(self, items: list[AudioItem], segment_size: int, sample_rate: int, seed: int) -> None:
        self.items, self.segment_size, self.sample_rate, self.seed = items, segment_size, sample_rate, seed
        self.cumulative = np.cumsum([max(it.num_samples, 1) for it in items])

    def __len__(self) -> int:
        return 2**62  # conceptually infinite; the sampler decides which indices are used

    def locate(self, n: int) -> tuple[int, int]:
        """(item index, start sample) of global sample ``n``."""
        rng = np.random.default_rng([self.seed, n])
        index = int(np.searchsorted(self.cumulative, rng.random() * self.cumulative[-1], side="right"))
        index = min(index, len(self.items) - 1)
        span = self.items[index].num_samples - self.segment_size
        return index, int(rng.integers(0, span + 1)) if span > 0 else 0

    def __getitem__(self, n: int) -> torch.Tensor:
        index, start = self.locate(n)
        return torch.from_numpy(self.items[index].read(start, self.segment_size, self.sample_rate).copy())


class StepSampler(torch.utils.data.Sampler):
    """Global sample indices of this process's share of every batch, from ``start_step`` on."""

    def __init__(self, batch_size: int, start_step: int, rank: int = 0, world_size: int = 1) -> None:
        self.batch_size, self.start_step, self.rank, self.world_size = batch_size, start_step, rank, world_size

    def __iter__(self) -> Iterator[int]:
        step = self.start_step
        while True:
            first = (step * self.world_size + self.rank) * self.batch_size
            yield from range(first, first + self.batch_size)
            step += 1


def validation_segments(corpus: AudioCorpus, length: int, count: int, sample_rate: int, seed: int) -> torch.Tensor:
    """Fixed validation audio ``[V, length]``: the middle of each held-out item, or seeded
    segments of the training items when nothing is held out."""
    if corpus.val:
        picks = [(it, max(0, (it.num_samples - length) // 2)) for it in corpus.val[:count]]
    else:
        log.warning("validating on segments of the training audio (fewer than 10 files, no validation split)")
        ds = SegmentDataset(corpus.train, length, sample_rate, seed + 1)
        picks = [(corpus.train[i], s) for i, s in (ds.locate(n) for n in range(count))]
    return torch.stack([torch.from_numpy(it.read(s, length, sample_rate).copy()) for it, s in picks])
