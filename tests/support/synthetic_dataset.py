"""Real dataset directories from synthetic sounds, written through the real shard writer.

``make_synthetic_dataset(dir, n_clips, n_classes)`` writes what ``clipsonic preprocess`` would:
``{split}-NNNNNN.tar`` WebDataset shards (``mel.npy`` float16 log-mel of a class's tone,
``clip.npy`` float16 ``[K, D]`` L2-normalised "frame embeddings" = class prototype + noise,
``json`` with the label) and a ``dataset.json`` from :class:`DatasetInfo`. Keep ``frames`` small
(16–32) so tests are fast. Everything is a pure function of ``seed``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from clipsonic.audio import MelConfig, mel_spectrogram
from clipsonic.data.clips import sequence_length
from clipsonic.data.dataset import DatasetInfo, ShardWriter, encode_sample
from clipsonic.encoders import ClipModelRef


def synthetic_mel_config(frames: int) -> MelConfig:
    return MelConfig(clip_samples=frames * MelConfig().hop_length)


def tone_logmel(class_index: int, variant: int, mel: MelConfig) -> np.ndarray:
    """Log-mel ``[64, frames]`` of a gated tone whose pitch names the class (220 Hz · 1.5^class)."""
    t = torch.arange(mel.clip_samples, dtype=torch.float64) / mel.sample_rate
    freq = 220.0 * 1.5 ** (class_index % 7) * (1 + 0.01 * (variant % 5))
    gate = 0.6 + 0.4 * torch.cos(2 * math.pi * (class_index % 4) * t)
    wav = (0.3 * gate * torch.sin(2 * math.pi * freq * t)).float()
    return mel_spectrogram(wav, mel).numpy()


def make_synthetic_dataset(
    root: str | Path,
    n_clips: int,
    n_classes: int,
    *,
    frames: int = 32,
    dim: int = 16,
    shards: int = 2,
    test_clips: int = 0,
    frames_per_clip: int = 3,
    seed: int = 0,
    nan_keys: Iterable[str] = (),
    clip_model: str = "synthetic/clip",
    mel: MelConfig | None = None,
    frame_rate: float | None = None,
) -> DatasetInfo:
    """Write a dataset of ``n_clips`` train clips over ``shards`` shards (+ ``test_clips`` in one test shard).

    Keys are ``clip-{i:05d}`` (train) and ``test-{i:05d}``; clip ``i`` belongs to class ``i % n_classes``.
    ``nan_keys``: clips whose stored mel gets a NaN (a corrupt input, the real path to a NaN loss).
    ``frame_rate``: also a ``seq.npy`` of N = clip seconds × rate "frame embeddings" per clip (as ``clip.npy``'s).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    mel = mel or synthetic_mel_config(frames)
    rng = np.random.default_rng(seed)
    prototypes = _unit(rng.standard_normal((n_classes, dim)))
    nan_keys = set(nan_keys)
    n_seq = sequence_length(mel, frame_rate)
    splits = {"train": _write_split(root, "train", "clip", n_clips, shards, n_classes, prototypes,
                                    frames_per_clip, mel, rng, nan_keys, n_seq)}
    if test_clips:
        splits["test"] = _write_split(root, "test", "test", test_clips, 1, n_classes, prototypes,
                                      frames_per_clip, mel, rng, nan_keys, n_seq)
    total = sum(s["clips"] for s in splits.values())
    info = DatasetInfo(
        root=root, mel=mel,
        clip=ClipModelRef(model=clip_model, dim=dim, fingerprint=f"{clip_model}:{dim}".encode().hex()[:40]),
        frames_per_clip=frames_per_clip, splits=splits,
        counts={"inputs": total, "clips": total, "rejected": 0, "silent_clips": 0},
        options={"synthetic": {"n_classes": n_classes, "seed": seed},
                 **({"options": {"clips": {"frame_rate": frame_rate}}} if frame_rate else {})},
    )
    info.save()
    return info


def _write_split(root: Path, split: str, prefix: str, n: int, shards: int, n_classes: int,
                 prototypes: np.ndarray, k: int, mel: MelConfig, rng: np.random.Generator,
                 nan_keys: set[str], n_seq: int = 0) -> dict:
    names: list[str] = []
    writer = ShardWriter(root, split, 0, max_bytes=1 << 40)
    per_shard = math.ceil(n / shards)
    for i in range(n):
        key, label = f"{prefix}-{i:05d}", i % n_classes
        logmel = tone_logmel(label, i // n_classes, mel)
        if key in nan_keys:
            logmel[3, 5] = np.nan
        emb = _unit(prototypes[label] + 0.3 * rng.standard_normal((k + n_seq, prototypes.shape[1]))
                    / math.sqrt(prototypes.shape[1]))
        meta = {"source": f"synthetic/{key}.wav", "start": 0.0, "label": f"class{label}", "split": split}
        writer.write(encode_sample(key, logmel, emb[:k], meta, seq=emb[k:] if n_seq else None))
        if (i + 1) % per_shard == 0:
            names.append(writer.finalize())
    names.append(writer.finalize())
    return {"shards": [name for name in names if name], "clips": n}


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)
