"""What every diffusion prior offers the pipeline, and the CLIP-space check they all share.

A prior maps CLIP *text* embeddings to plausible CLIP *image* embeddings (DALL-E 2's prior),
closing the modality gap before the mel diffusion model, which only ever saw image embeddings.
It is only meaningful in the CLIP space it was trained in: a prior for ViT-L/14 (768-d) is
nonsense for any other CLIP, even one of the same width, so every prior carries the
:class:`~clipsonic.data.dataset.ClipModelRef` of its space and pipelines refuse a mismatch.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from clipsonic.data.dataset import ClipModelRef
from clipsonic.errors import ClipsonicError

CONFIG_NAME = "config.json"


class PriorError(ClipsonicError):
    """A prior cannot be found, loaded, trained, attached or used with the given CLIP."""


def check_same_clip(prior: ClipModelRef, other: ClipModelRef, what: str = "the pipeline") -> None:
    """Refuse a prior made in another CLIP space than ``other``, naming both.

    Same width is required; then the weight fingerprints must agree when both are known, and the
    model names otherwise (a pretrained prior records its CLIP by name only).
    """
    same = prior.dim == other.dim and (
        prior.fingerprint == other.fingerprint if prior.fingerprint and other.fingerprint
        else prior.model == other.model
    )
    if not same:
        raise PriorError(
            f"the prior works in the space of {prior.describe() if prior.fingerprint else f'{prior.model} ({prior.dim}-d)'} "
            f"but {what} uses {other.describe()}; train a prior with that CLIP (clipsonic train-prior "
            f"--clip-model {other.model}) or, if both names mean the same weights, attach with "
            f"--clip-model {other.model}"
        )


def per_sample_noise(shape: Sequence[int], generators: Sequence[torch.Generator] | None,
                     device: torch.device | str = "cpu") -> torch.Tensor:
    """Standard normal ``[B, *shape[1:]]`` where row i comes from ``generators[i]`` alone.

    Drawing each row from its own generator makes a sample depend only on its own seed, so a batch
    gives what the same queries give one at a time (diffusers' ``randn_tensor`` with a list).
    """
    batch, rest = shape[0], tuple(shape[1:])
    if generators is None:
        return torch.randn((batch, *rest)).to(device)
    if len(generators) != batch:
        raise ValueError(f"{len(generators)} generators for a batch of {batch}")
    return torch.cat([torch.randn((1, *rest), generator=g, device=g.device) for g in generators]).to(device)


class Prior(abc.ABC):
    """A loaded prior. ``sample`` returns L2-normalised image embeddings ``[B, D]`` (float32, CPU)."""

    type_name: str = ""

    def __init__(self, clip: ClipModelRef) -> None:
        self.clip = clip

    @property
    def dim(self) -> int:
        return self.clip.dim

    @abc.abstractmethod
    def sample(self, texts: Sequence[str], text_emb: torch.Tensor, encoder, *,
               generators: Sequence[torch.Generator] | None = None, guidance_scale: float | None = None,
               steps: int | None = None) -> torch.Tensor:
        """Image embeddings ``[B, D]`` for ``texts`` (B strings) whose L2-normalised CLIP text
        embeddings are ``text_emb`` ``[B, D]``; ``encoder`` is the pipeline's
        :class:`~clipsonic.encoders.ClipEncoder` (priors that read token states call it).
        ``generators``: one per row (see :func:`per_sample_noise`); ``None`` = global RNG.
        ``guidance_scale`` / ``steps``: ``None`` = the prior's own defaults."""

    @abc.abstractmethod
    def to(self, device: str | torch.device, dtype: torch.dtype | None = None) -> Prior:
        """Move the weights; returns ``self``."""

    @abc.abstractmethod
    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write a self-contained prior directory (``config.json`` + safetensors); returns it."""

    def check_compatible(self, clip: ClipModelRef, what: str = "the pipeline") -> None:
        check_same_clip(self.clip, clip, what)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.clip.model!r}, {self.dim}-d)"
