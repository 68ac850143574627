"""The evaluation clips (a split's keys, labels, middle-frame CLIP embeddings, mels, real audio, stored frame
sequences) and their text queries.

A captions file ``{label: [caption, …]}`` gives clip ``i`` (its position in the split, which also seeds it)
``captions[label][i % n]``, so a clip keeps its caption and cached audio whatever ``--num-clips`` picks. Beware of
aliasing: when clip i has class i % C and n shares a factor with C, a label's clips see only some of its captions.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence

import numpy as np

from clipsonic.data.dataset import DatasetInfo
from clipsonic.data.loader import decode_flac, decode_npy, iter_raw_samples
from clipsonic.errors import ClipsonicError
from clipsonic.files import read_json

log = logging.getLogger(__name__)

Captions = Mapping[str, Sequence[str]]
_SHAPE = 'a JSON object mapping each label to a non-empty list of caption strings, e.g. {"dog": ["a dog barks"]}'


@dataclasses.dataclass(frozen=True)
class EvalClip:
    key: str
    label: str | None
    image_embedding: np.ndarray  # [D] float32, L2-normalised (the middle stored frame)
    logmel: np.ndarray  # [n_mels, frames] float32
    audio: np.ndarray | None  # [samples] float32 at the dataset's sample rate (None: no flac stored)
    index: int = 0  # position in the split (stable whatever --num-clips picks: it seeds the clip)
    sequence: np.ndarray | None = None  # [N, D] float32, the stored frame sequence (None: a dataset without seq.npy)


def pick_indices(total: int, count: int | None) -> list[int]:
    """``count`` indices spread evenly over ``range(total)`` (all when None or ≥ total): not a prefix, as shards
    are often in class order (MUSIC's JSON lists videos by instrument)."""
    if count is None or count >= total:
        return list(range(total))
    if count < 1:
        raise ClipsonicError("--num-clips must be at least 1")
    return sorted({int(round(x)) for x in np.linspace(0, total - 1, count)})


def load_test_clips(info: DatasetInfo, split: str = "test", num_clips: int | None = None) -> list[EvalClip]:
    """Read ``num_clips`` clips (spread over the split, in shard order) with their audio if stored."""
    paths, total = info.shard_paths(split), info.num_clips(split)
    if total == 0:
        raise ClipsonicError(f"{info.root}: the '{split}' split is empty; re-run preprocess with --test-fraction")
    wanted = set(pick_indices(total, num_clips))
    clips: list[EvalClip] = []
    samples = iter_raw_samples(paths, ("mel.npy", "clip.npy", "json"), optional=("flac", "seq.npy"))
    for index, sample in enumerate(samples):
        if index not in wanted:  # read past, never decoded
            continue
        key = sample["__key__"]
        frames = decode_npy(sample["clip.npy"]).astype(np.float32)  # [K, D]
        label = json.loads(sample["json"]).get("label")
        audio = decode_flac(sample["flac"], info.mel.sample_rate, key) if "flac" in sample else None
        sequence = decode_npy(sample["seq.npy"]).astype(np.float32) if "seq.npy" in sample else None
        clips.append(EvalClip(key, str(label) if label not in (None, "") else None, frames[frames.shape[0] // 2],
                              decode_npy(sample["mel.npy"]).astype(np.float32), audio, index, sequence))
    if not clips:
        raise ClipsonicError(f"{info.root}: no samples read from the '{split}' split")
    log.info("evaluation set: %d of %d '%s' clips", len(clips), total, split)
    return clips


def load_captions(path: str | os.PathLike) -> dict[str, list[str]]:
    """Read and check a captions file; every problem is one line naming the file and the fix."""
    try:
        data = read_json(path, "captions file")
    except ClipsonicError as exc:
        raise ClipsonicError(f"{exc}; pass --captions a file holding {_SHAPE}") from None
    if not isinstance(data, dict):
        raise ClipsonicError(f"captions file {path} holds a JSON {type(data).__name__}; it must hold {_SHAPE}")
    for label, captions in data.items():
        if not (isinstance(captions, list) and captions and all(isinstance(c, str) and c.strip() for c in captions)):
            raise ClipsonicError(f"captions file {path}: the entry of label {label!r} is {json.dumps(captions)[:60]}; "
                                 f"the file must hold {_SHAPE}")
    return data


def captions_digest(captions: Captions) -> str:
    """SHA-256 (first 16 hex) of the captions' content: the cache key of audio generated from them."""
    text = json.dumps({k: list(v) for k, v in captions.items()}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def text_query(clip: EvalClip, template: str, captions: Captions | None) -> str:
    """The text query of a labelled clip: its label's caption ``clip.index % n``, else the template."""
    options = captions.get(clip.label) if captions else None
    return options[clip.index % len(options)] if options else template.format(label=clip.label)


def uncaptioned_note(clips: Sequence[EvalClip], captions: Captions, path: str) -> str | None:
    """A note naming the labels of the split that the captions file does not cover (they use the template)."""
    missing = [c.label for c in clips if c.label and not captions.get(c.label)]
    return (f"{len(missing)} clip(s) with label(s) {some_names(missing)} have no captions in {path}: "
            "their text modes query with text_template") if missing else None


def some_names(names: Sequence[str]) -> str:
    """The distinct ``names``, sorted and quoted, the first five then "…"."""
    distinct = sorted(set(names))
    return ", ".join(repr(n) for n in distinct[:5]) + (", …" if len(distinct) > 5 else "")
