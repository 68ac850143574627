"""The dataset statistics a pipeline export carries: the mean image embedding and a retrieval bank."""

from __future__ import annotations

import hashlib
import heapq

import numpy as np
import torch

from clipsonic.data.dataset import DatasetInfo
from clipsonic.data.loader import iter_split
from clipsonic.errors import ClipsonicError
from clipsonic.export import PipelineStats


def compute_dataset_stats(info: DatasetInfo, bank_size: int, split: str = "train") -> PipelineStats:
    """One pass over a split's clip embeddings: their mean, and a bank of up to ``bank_size`` of them.

    The bank keeps the (key, frame) pairs with the smallest BLAKE2b hash of ``"key/frame"``, sorted
    by that hash: a uniform, deterministic choice independent of shard order.
    """
    total: np.ndarray | None = None
    clips = embeddings = 0
    heap: list[tuple[int, str, np.ndarray, str | None]] = []  # max-heap by hash via negation
    for raw in iter_split(info, split, fields=("clip.npy", "json")):
        clip = raw["clip.npy"].astype(np.float64)  # [K, D]
        label = raw["json"].get("label")
        total = clip.sum(0) if total is None else total + clip.sum(0)
        clips, embeddings = clips + 1, embeddings + clip.shape[0]
        for k, row in enumerate(clip):
            name = f"{raw['__key__']}/{k}"
            h = int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big")
            item = (-h, name, row.astype(np.float16), label)
            if len(heap) < bank_size:
                heapq.heappush(heap, item)
            elif bank_size and -h > heap[0][0]:
                heapq.heapreplace(heap, item)
    if total is None:
        raise ClipsonicError(f"{info.root}: the {split!r} split has no clips to compute statistics from")
    chosen = sorted(heap, key=lambda item: -item[0])
    bank = np.stack([row for _, _, row, _ in chosen]) if chosen else np.zeros((0, total.shape[0]), np.float16)
    return PipelineStats(
        mean_image_embedding=torch.from_numpy((total / embeddings).astype(np.float32)),
        image_bank=torch.from_numpy(bank), bank_keys=[n for _, n, _, _ in chosen],
        bank_labels=[lab for _, _, _, lab in chosen],
        info={"dataset": str(info.root.resolve()), "split": split, "num_clips": clips, "num_embeddings": embeddings,
              "selection": "smallest blake2b-64 of 'key/frame'"})
