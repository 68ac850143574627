"""A dataset directory with a labelled test split that stores its audio (flac), for evaluation tests.

Written through the real :class:`ShardWriter` / :func:`encode_sample`, as ``clipsonic preprocess
--keep-audio`` would: per clip a class tone with a little noise (``flac``, 16 kHz), its BigVGAN
log-mel (``mel.npy``), K frame embeddings (``clip.npy``), the middle frame (``jpg``: a picture of
one colour per class) and ``json`` with the label. With ``encoder`` (a CLIP from
``clipsonic.encoders.load_clip``) the embeddings are that CLIP's embeddings of the class picture,
as preprocess computes them; without, class prototype + noise, L2-normalised. Everything is a
pure function of ``seed``.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import soundfile
import torch

from clipsonic.audio import MelConfig, mel_spectrogram
from clipsonic.data.dataset import DatasetInfo, ShardWriter, encode_sample
from clipsonic.encoders import ClipModelRef
from clipsonic.export import read_model_index

LABELS = ("dog barking", "violin", "car engine", "rain", "flute", "siren")
COLOURS = ((230, 30, 30), (30, 200, 40), (40, 60, 230), (240, 220, 40), (230, 40, 220), (30, 220, 220))


def pipeline_refs(pipeline_dir: str | Path) -> tuple[MelConfig, ClipModelRef]:
    """The mel config and CLIP reference a pipeline directory expects (from its model_index.json)."""
    index = read_model_index(pipeline_dir)
    return index.mel, index.clip


def class_tone(class_index: int, variant: int, samples: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(samples) / sample_rate
    freq = 220.0 * 1.5 ** (class_index % 7) * (1 + 0.01 * variant)
    gate = 0.6 + 0.4 * np.cos(2 * math.pi * (1 + class_index % 3) * t)
    wav = 0.3 * gate * np.sin(2 * math.pi * freq * t) + rng.normal(scale=0.01, size=samples)
    return wav.astype(np.float32)


def class_picture(class_index: int) -> np.ndarray:
    """uint8 ``[32, 32, 3]``: one colour per class."""
    return np.broadcast_to(np.array(COLOURS[class_index % len(COLOURS)], np.uint8), (32, 32, 3)).copy()


def _jpg(picture: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(picture).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def make_eval_dataset(root: str | Path, mel: MelConfig, clip: ClipModelRef, *, test_clips: int = 6,
                      train_clips: int = 0, n_classes: int = 3, frames_per_clip: int = 3, labels: bool = True,
                      audio: bool = True, encoder=None, label_names: tuple[str, ...] = LABELS,
                      seed: int = 0) -> DatasetInfo:
    """Write ``root`` with a ``test`` split (and optionally a ``train`` split) of class tones."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    if encoder is not None:
        prototypes = encoder.encode_images([class_picture(c) for c in range(n_classes)]).numpy().astype(np.float64)
    else:
        prototypes = rng.normal(size=(n_classes, clip.dim))
    noise = 0.0 if encoder is not None else 0.3
    splits = {}
    for split, count in (("train", train_clips), ("test", test_clips)):
        if count == 0:
            continue
        writer = ShardWriter(root, split, 0, max_bytes=1 << 40)
        for i in range(count):
            c = i % n_classes
            wav = class_tone(c, i // n_classes, mel.clip_samples, mel.sample_rate, rng)
            logmel = mel_spectrogram(torch.from_numpy(wav), mel).numpy()
            emb = prototypes[c] + noise * rng.normal(size=(frames_per_clip, clip.dim))
            emb /= np.linalg.norm(emb, axis=1, keepdims=True)
            meta = {"source": f"synthetic/{split}-{i:05d}.mp4", "start": 0.0, "split": split,
                    "frame_times": [float(t) for t in np.linspace(0.5, 3.5, frames_per_clip)]}
            if labels:
                meta["label"] = label_names[c % len(label_names)]
            flac = None
            if audio:
                buf = io.BytesIO()
                soundfile.write(buf, wav, mel.sample_rate, format="FLAC", subtype="PCM_16")
                flac = buf.getvalue()
            writer.write(encode_sample(f"{split}-{i:05d}", logmel, emb, meta, jpg=_jpg(class_picture(c)), flac=flac))
        splits[split] = {"shards": [writer.finalize()], "clips": count}
    info = DatasetInfo(root=root, mel=mel, clip=clip, frames_per_clip=frames_per_clip, splits=splits,
                       counts={"inputs": train_clips + test_clips, "clips": train_clips + test_clips, "rejected": 0},
                       options={"keep_audio": audio})
    info.save()
    return info
