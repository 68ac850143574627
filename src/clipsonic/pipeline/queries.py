"""Queries: checking them, turning them into CLIP embeddings, and deciding the output length.

A query is one kind of thing, one or several of it: texts, images (a path to any file PIL opens,
a ``PIL.Image``, or a uint8 array ``[H, W, 3]``), videos (paths), or precomputed CLIP image
embeddings ``[Q, D]`` (e.g. a dataset's stored frame embeddings; renormalised here). A video becomes K frames
spread evenly over it whose embeddings are averaged and renormalised ("mean"), or its first or
middle frame alone; the generated audio then lasts as long as the video.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clipsonic.audio import MelConfig
from clipsonic.errors import ClipsonicError

VIDEO_POOLING = ("mean", "first", "middle")
DEFAULT_VIDEO_FRAMES = 8
# The longest audio one call generates. The UNet is convolutional in time, so longer-than-training
# clips work, but its coarsest level attends over all frames (memory grows with the square of the
# length) and quality drifts away from the training length; 60 s keeps one sample under ~1 GB.
MAX_SECONDS = 60.0


class QueryError(ClipsonicError, ValueError):
    """A query is missing, ambiguous, empty, unreadable, or asks for an impossible length."""


@dataclasses.dataclass
class Query:
    """What to generate for: ``kind`` is "text", "image", "video" or "embedding"; ``items`` has Q entries."""

    kind: str
    items: list[Any]

    def __len__(self) -> int:
        return len(self.items)

    def describe(self, i: int) -> str:
        """A short human name of item i (the text, the file name, or "image i")."""
        item = self.items[i]
        if self.kind == "text":
            return item
        if isinstance(item, str | os.PathLike):
            return Path(item).name
        return f"{self.kind} {i}"


def _as_list(value: Any) -> list[Any]:
    if isinstance(value, str | os.PathLike | np.ndarray) or hasattr(value, "convert"):  # PIL images have .convert
        return [value]
    return list(value)


def parse_query(text: Any = None, image: Any = None, video: Any = None, image_embeds: Any = None) -> Query:
    """Exactly one of ``text`` / ``image`` / ``video`` (one item or a sequence) / ``image_embeds`` ``[Q, D]``."""
    given = {k: v for k, v in (("text", text), ("image", image), ("video", video), ("embedding", image_embeds))
             if v is not None}
    if not given:
        raise QueryError("no query: give text, an image or a video")
    if len(given) > 1:
        raise QueryError(f"one kind of query at a time, got {' and '.join(given)}")
    kind, value = next(iter(given.items()))
    if kind == "embedding":
        emb = torch.as_tensor(np.asarray(value, dtype=np.float32))
        if emb.ndim != 2 or emb.shape[0] == 0 or not bool(torch.isfinite(emb).all()) or bool((emb.norm(dim=-1) == 0).any()):
            raise QueryError(f"image_embeds must be finite, non-zero embeddings [Q, D], got shape {list(emb.shape)}")
        return Query(kind, list(torch.nn.functional.normalize(emb, dim=-1)))
    items = _as_list(value)
    if not items:
        raise QueryError(f"the {kind} query is an empty list")
    if kind == "text":
        for i, t in enumerate(items):
            if not isinstance(t, str):
                raise QueryError(f"text query {i} is a {type(t).__name__}, not a string")
            if not t.strip():
                raise QueryError(f"text query {i} is empty or only whitespace")
        items = [t.strip() for t in items]
    if kind == "video":
        for v in items:
            if not isinstance(v, str | os.PathLike):
                raise QueryError(f"a video query is a file path, got {type(v).__name__}")
    return Query(kind, items)


def load_image(item: Any) -> Any:
    """A PIL RGB image or uint8 array from a path / PIL image / array (QueryError if unreadable)."""
    if isinstance(item, str | os.PathLike):
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(item) as im:
                return im.convert("RGB")
        except FileNotFoundError:
            raise QueryError(f"{item}: no such image file") from None
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            raise QueryError(f"{item}: not a readable image ({exc})") from None
    if isinstance(item, np.ndarray):
        if item.dtype != np.uint8 or item.ndim != 3 or item.shape[2] != 3:
            raise QueryError(f"an image array must be uint8 [H, W, 3], got {item.dtype} {list(item.shape)}")
        return item
    if hasattr(item, "convert"):
        return item.convert("RGB")
    raise QueryError(f"an image query is a path, a PIL.Image or a uint8 array, got {type(item).__name__}")


def video_frame_times(duration: float, num_frames: int, pooling: str) -> list[float]:
    """Frame times (s): the centres of ``num_frames`` equal spans ("mean"), 0 ("first") or the middle."""
    if pooling == "first":
        return [0.0]
    if pooling == "middle":
        return [duration / 2]
    return [(i + 0.5) * duration / num_frames for i in range(num_frames)]


def video_duration(path: str | os.PathLike) -> float:
    """Seconds of a video file that has pictures (QueryError naming the file otherwise)."""
    from clipsonic.media import probe

    info = probe(path)  # MediaError (a ClipsonicError) for missing / unreadable files
    if not info.has_video:
        raise QueryError(f"{path}: has no video stream (an audio file or a picture?)")
    if not info.duration > 0:
        raise QueryError(f"{path}: the video has no frames")
    return float(info.duration)


def encode_query(query: Query, encoder, *, pooling: str = "mean", num_frames: int = DEFAULT_VIDEO_FRAMES,
                 max_seconds: float | None = None) -> tuple[torch.Tensor, list[float] | None]:
    """CLIP embeddings ``[Q, D]`` (L2-normalised) and, for videos, their durations in seconds.

    Text rows are text embeddings (to be bridged); image and video rows are image embeddings.
    Video frames are taken from the first ``max_seconds`` (the part the audio will cover).
    """
    if query.kind == "text":
        return encoder.encode_texts(query.items), None
    if query.kind == "embedding":
        if query.items[0].shape[0] != encoder.dim:
            raise QueryError(f"image_embeds are {query.items[0].shape[0]}-d but {encoder.name} embeds in {encoder.dim} dimensions")
        return torch.stack(query.items), None
    if query.kind == "image":
        return encoder.encode_images([load_image(item) for item in query.items]), None
    if pooling not in VIDEO_POOLING:
        raise QueryError(f"video frames: choose one of {list(VIDEO_POOLING)}, got {pooling!r}")
    if num_frames < 1:
        raise QueryError(f"video frames: need at least 1, got {num_frames}")
    from clipsonic.media import load_frames

    rows, durations = [], []
    for path in query.items:
        duration = video_duration(path)
        span = min(duration, max_seconds) if max_seconds else duration
        frames = load_frames(path, video_frame_times(span, num_frames, pooling))  # [H, W, 3] uint8 each
        rows.append(torch.nn.functional.normalize(encoder.encode_images(frames).mean(0), dim=-1))
        durations.append(duration)
    return torch.stack(rows), durations


def resolve_frames(seconds: float | None, durations: list[float] | None, mel: MelConfig, multiple: int,
                   max_seconds: float = MAX_SECONDS) -> int:
    """Mel frames to generate: a multiple of ``multiple`` (the UNet's downsampling factor).

    ``seconds`` rounds to the nearest multiple (at least one); without it a video query lasts as
    long as its longest video (rounded up, so the audio covers it) and other queries one training clip.
    """
    frame_seconds = mel.hop_length / mel.sample_rate
    if seconds is not None:
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not math.isfinite(seconds) or seconds <= 0:
            raise QueryError(f"seconds must be a positive number, got {seconds!r}")
        if seconds > max_seconds:
            raise QueryError(f"seconds={seconds:g} is over the {max_seconds:g}-s limit of one generation")
        return max(multiple, round(seconds / frame_seconds / multiple) * multiple)
    if durations:
        longest = max(durations)
        if longest > max_seconds:
            raise QueryError(f"the video lasts {longest:.1f} s, over the {max_seconds:g}-s limit of one "
                             f"generation; pass seconds (e.g. {max_seconds:g}) to cover its beginning")
        return max(multiple, math.ceil(longest / frame_seconds / multiple) * multiple)
    return max(multiple, mel.clip_frames // multiple * multiple)


def expand_seeds(seed: int | Sequence[int] | None, generator: Any, batch: int) -> tuple[list[torch.Generator], list[int] | None]:
    """One CPU generator per output row, and the seeds used (None when generators were given).

    ``seed`` int: row i gets ``seed + i``; a sequence: one seed per row; neither: random seeds
    (reported, so a result can be reproduced). ``generator``: one torch.Generator shared by all
    rows, or one per row.
    """
    if seed is not None and generator is not None:
        raise QueryError("give seed or generator, not both")
    if generator is not None:
        gens = list(generator) if isinstance(generator, Sequence) else [generator] * batch
        if len(gens) != batch:
            raise QueryError(f"{len(gens)} generators for {batch} outputs; give one, or one per output")
        return gens, None
    if seed is None:
        seeds = [int(s) for s in torch.randint(0, 2**31 - 1, (batch,))]
    elif isinstance(seed, Sequence) and not isinstance(seed, str):
        seeds = [int(s) for s in seed]
        if len(seeds) != batch:
            raise QueryError(f"{len(seeds)} seeds for {batch} outputs (queries × num_samples)")
    elif isinstance(seed, int) and not isinstance(seed, bool):
        seeds = [seed + i for i in range(batch)]
    else:
        raise QueryError(f"seed must be an integer or a list of integers, got {seed!r}")
    return [torch.Generator().manual_seed(s) for s in seeds], seeds
