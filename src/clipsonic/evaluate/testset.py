"""The evaluation clips: a dataset split's keys, labels, frame embeddings, mels and real audio.

For each clip, IQ conditions on the CLIP embedding of its middle stored frame (row ``K // 2`` of
``clip.npy``, the frame preprocess also saves as jpg); the text modes query with its label; the
real audio (the sample's ``flac``) is the FAD reference set and its log-mel is what the vocoder
reconstructs for the upper-bound row.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging

import numpy as np

from clipsonic.data.dataset import DatasetError, DatasetInfo

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class EvalClip:
    key: str
    label: str | None
    image_embedding: np.ndarray  # [D] float32, L2-normalised (the middle stored frame)
    logmel: np.ndarray  # [n_mels, frames] float32
    audio: np.ndarray | None  # [samples] float32 at the dataset's sample rate (None: no flac stored)
    index: int = 0  # position in the split (stable whatever --num-clips picks: it seeds the clip)


def pick_indices(total: int, count: int | None) -> list[int]:
    """``count`` indices spread evenly over ``range(total)`` (all when ``count`` is None or ≥ total).

    Evenly spaced rather than the first ``count``: shards are often written in class order
    (MUSIC's JSON lists videos by instrument), so a prefix would cover only a few classes.
    """
    if count is None or count >= total:
        return list(range(total))
    if count < 1:
        raise DatasetError("--num-clips must be at least 1")
    return sorted({int(round(x)) for x in np.linspace(0, total - 1, count)})


def _decode_audio(payload: bytes, key: str, sample_rate: int) -> np.ndarray:
    import soundfile

    try:
        wav, rate = soundfile.read(io.BytesIO(payload), dtype="float32", always_2d=False)
    except (RuntimeError, ValueError) as exc:
        raise DatasetError(f"sample {key!r}: its flac audio cannot be decoded ({exc})") from None
    if wav.ndim == 2:
        wav = wav.mean(axis=1)
    if rate != sample_rate:
        import soxr

        wav = soxr.resample(wav, rate, sample_rate).astype(np.float32)
    return wav


def load_test_clips(info: DatasetInfo, split: str = "test", num_clips: int | None = None) -> list[EvalClip]:
    """Read ``num_clips`` clips (spread over the split, in shard order) with their audio if stored."""
    import webdataset as wds

    total = info.num_clips(split)
    paths = [str(p) for p in info.shard_paths(split)]
    if total == 0:
        raise DatasetError(f"{info.root}: the '{split}' split is empty; re-run preprocess with --test-fraction")
    wanted = set(pick_indices(total, num_clips))
    clips: list[EvalClip] = []
    index = -1
    for sample in wds.tariterators.tarfile_samples([{"url": p} for p in paths]):
        index += 1
        if index not in wanted:
            continue
        key = sample["__key__"]
        try:
            logmel = np.load(io.BytesIO(sample["mel.npy"]), allow_pickle=False).astype(np.float32)
            frames = np.load(io.BytesIO(sample["clip.npy"]), allow_pickle=False).astype(np.float32)
            meta = json.loads(sample["json"])
        except KeyError as exc:
            raise DatasetError(f"sample {key!r} has no {exc.args[0]}; re-run preprocess") from None
        audio = _decode_audio(sample["flac"], key, info.mel.sample_rate) if "flac" in sample else None
        label = meta.get("label")
        clips.append(EvalClip(key, str(label) if label not in (None, "") else None,
                              frames[frames.shape[0] // 2], logmel, audio, index))
    if not clips:
        raise DatasetError(f"{info.root}: no samples read from the '{split}' split")
    log.info("evaluation set: %d of %d '%s' clips", len(clips), total, split)
    return clips
