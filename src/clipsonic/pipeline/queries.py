"""Queries (texts, images, videos or CLIP image embeddings ``[Q, D]``): checking them, turning them into
CLIP embeddings, and deciding the output length and the seeds."""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from clipsonic.audio import MelConfig
from clipsonic.errors import ClipsonicError
from clipsonic.media import load_frames, probe

VIDEO_POOLING = ("mean", "first", "middle")
DEFAULT_VIDEO_FRAMES = 8
# The longest audio one call generates. The UNet is convolutional in time, so longer-than-training
# clips work, but its coarsest level attends over all frames (memory grows with the square of the
# length) and quality drifts away from the training length; 60 s keeps one sample under ~1 GB.
MAX_SECONDS = 60.0
# The most outputs (queries × num_samples) one call draws, and frames averaged per video: far beyond any real use,
# low enough that a typo (num_samples=10**9) is one line instead of an out-of-memory crash.
MAX_ROWS, MAX_VIDEO_FRAMES = 4096, 1024
SEED_RANGE = range(0, 2**63)  # what torch.manual_seed and numpy both take (clipsonic.config.Seed)


@dataclasses.dataclass
class Query:
    """What to generate for: ``kind`` is "text", "image", "video" or "embedding"; ``items`` has Q entries."""

    kind: str
    items: list[Any]

    def __len__(self) -> int:
        return len(self.items)

    def describe(self, i: int) -> str:
        item = self.items[i]
        if self.kind == "text":
            return item
        return Path(item).name if isinstance(item, str | os.PathLike) else f"{self.kind} {i}"


def parse_query(text: Any = None, image: Any = None, video: Any = None, image_embeds: Any = None) -> Query:
    """Exactly one of ``text`` / ``image`` / ``video`` (one item or a sequence) / ``image_embeds`` ``[Q, D]``."""
    given = {k: v for k, v in (("text", text), ("image", image), ("video", video), ("embedding", image_embeds))
             if v is not None}
    if not given:
        raise ClipsonicError("no query: give text, an image or a video")
    if len(given) > 1:
        raise ClipsonicError(f"one kind of query at a time, got {' and '.join(given)}")
    kind, value = next(iter(given.items()))
    if kind == "embedding":
        emb = torch.as_tensor(np.asarray(value, dtype=np.float32))
        if emb.ndim != 2 or emb.shape[0] == 0 or not bool(torch.isfinite(emb).all()) or bool((emb.norm(dim=-1) == 0).any()):
            raise ClipsonicError(f"image_embeds must be finite, non-zero embeddings [Q, D], got shape {list(emb.shape)}")
        return Query(kind, list(torch.nn.functional.normalize(emb, dim=-1)))
    one = isinstance(value, str | os.PathLike | np.ndarray) or hasattr(value, "convert")  # PIL images have .convert
    items = [value] if one else list(value)
    if not items:
        raise ClipsonicError(f"the {kind} query is an empty list")
    for i, item in enumerate(items):
        if kind == "text" and not isinstance(item, str):
            raise ClipsonicError(f"text query {i} is a {type(item).__name__}, not a string")
        if kind == "text" and not item.strip():
            raise ClipsonicError(f"text query {i} is empty or only whitespace")
        if kind == "video" and not isinstance(item, str | os.PathLike):
            raise ClipsonicError(f"a video query is a file path, got {type(item).__name__}")
    return Query(kind, [t.strip() for t in items] if kind == "text" else items)


def load_image(item: Any) -> Any:
    """A path's picture as a PIL RGB image; PIL images and arrays as they are (the encoder checks them)."""
    if not isinstance(item, str | os.PathLike):
        return item
    try:
        with warnings.catch_warnings():  # PIL only warns between MAX_IMAGE_PIXELS and twice that: refuse both
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(item) as im:
                return im.convert("RGB")
    except FileNotFoundError:
        raise ClipsonicError(f"{item}: no such image file") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ClipsonicError(f"{item}: refused as a possible decompression bomb ({exc}); use a smaller picture") from None
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise ClipsonicError(f"{item}: not a readable image ({exc})") from None


def encode_query(query: Query, encoder, *, pooling: str = "mean", num_frames: int = DEFAULT_VIDEO_FRAMES,
                 max_seconds: float = MAX_SECONDS) -> tuple[torch.Tensor, list[float] | None]:
    """L2-normalised CLIP embeddings ``[Q, D]`` (text rows: text embeddings, to be bridged) and, for videos,
    their durations in seconds; video frames come from the first ``max_seconds`` (what the audio covers)."""
    if query.kind == "text":
        return encoder.encode_texts(query.items), None
    if query.kind == "embedding":
        if query.items[0].shape[0] != encoder.dim:
            raise ClipsonicError(f"image_embeds are {query.items[0].shape[0]}-d but {encoder.name} embeds in {encoder.dim} dimensions")
        return torch.stack(query.items), None
    if query.kind == "image":
        return encoder.encode_images([load_image(item) for item in query.items]), None
    if pooling not in VIDEO_POOLING:
        raise ClipsonicError(f"video frames: choose one of {list(VIDEO_POOLING)}, got {pooling!r}")
    check_positive_int("num_frames", num_frames, MAX_VIDEO_FRAMES)
    rows, durations = [], []
    for path in query.items:
        info = probe(path)  # MediaError (a ClipsonicError) for missing / unreadable files
        if not info.has_video:
            raise ClipsonicError(f"{path}: has no video stream (an audio file or a picture?)")
        if not info.duration > 0:
            raise ClipsonicError(f"{path}: the video has no frames")
        span = min(float(info.duration), max_seconds)
        times = ([(i + 0.5) * span / num_frames for i in range(num_frames)]  # the centres of equal spans
                 if pooling == "mean" else [0.0 if pooling == "first" else span / 2])
        frames = load_frames(path, times)  # [H, W, 3] uint8 each
        rows.append(torch.nn.functional.normalize(encoder.encode_images(frames).mean(0), dim=-1))
        durations.append(float(info.duration))
    return torch.stack(rows), durations


def resolve_frames(seconds: float | None, durations: list[float] | None, mel: MelConfig, multiple: int) -> int:
    """Mel frames to generate, a multiple of ``multiple``: ``seconds`` rounded, else the longest video
    (rounded up, so the audio covers it), else one training clip."""
    frame_seconds = mel.hop_length / mel.sample_rate
    if seconds is not None:
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not math.isfinite(seconds) or seconds <= 0:
            raise ClipsonicError(f"seconds must be a positive number, got {seconds!r}")
        if seconds > MAX_SECONDS:
            raise ClipsonicError(f"seconds={seconds:g} is over the {MAX_SECONDS:g}-s limit of one generation")
        return max(multiple, round(seconds / frame_seconds / multiple) * multiple)
    if durations:
        longest = max(durations)
        if longest > MAX_SECONDS:
            raise ClipsonicError(f"the video lasts {longest:.1f} s, over the {MAX_SECONDS:g}-s limit of one "
                                 f"generation; pass seconds (e.g. {MAX_SECONDS:g}) to cover its beginning")
        return max(multiple, math.ceil(longest / frame_seconds / multiple) * multiple)
    return max(multiple, mel.clip_frames // multiple * multiple)


def expand_seeds(seed: int | Sequence[int] | None, generator: Any, batch: int) -> tuple[list[torch.Generator], list[int] | None]:
    """One CPU generator per row and the seeds used (None when generators were given): an int seed gives
    row i ``seed + i``, a sequence one seed per row, neither random (reported) seeds."""
    if seed is not None and generator is not None:
        raise ClipsonicError("give seed or generator, not both")
    if generator is not None:
        gens = list(generator) if isinstance(generator, Sequence) else [generator] * batch
        if len(gens) != batch:
            raise ClipsonicError(f"{len(gens)} generators for {batch} outputs; give one, or one per output")
        return gens, None
    if seed is None:
        seeds = [int(s) for s in torch.randint(0, 2**31 - 1, (batch,))]
    elif isinstance(seed, Sequence) and not isinstance(seed, str):
        seeds = [int(s) for s in seed]
        if len(seeds) != batch:
            raise ClipsonicError(f"{len(seeds)} seeds for {batch} outputs (queries × num_samples)")
    elif isinstance(seed, int) and not isinstance(seed, bool):
        seeds = [seed + i for i in range(batch)]
    else:
        raise ClipsonicError(f"seed must be an integer or a list of integers, got {seed!r}")
    if bad := [s for s in seeds if s not in SEED_RANGE]:
        raise ClipsonicError(f"seed {bad[0]} is outside 0..2**63-1 (output i uses seed + i); choose a seed in that range")
    return [torch.Generator().manual_seed(s) for s in seeds], seeds


def check_positive_int(name: str, value: Any, most: int | None = None) -> None:
    """A one-line error unless ``value`` is an int (not a bool) in 1..``most`` (no upper bound when None)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= (most or value):
        raise ClipsonicError(f"{name} must be " + (f"an integer in 1..{most}" if most else "a positive integer")
                             + f", got {value!r}")


def read_prompts(path: str | os.PathLike) -> list[str]:
    """Text queries from a file, one per line; blank lines and ``#`` lines are skipped."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ClipsonicError(f"{path}: cannot read the prompt file ({exc})") from None
    prompts = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise ClipsonicError(f"{path}: no prompts (one per line; blank lines and '#' lines are skipped)")
    return prompts
