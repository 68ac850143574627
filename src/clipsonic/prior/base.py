"""What every diffusion prior offers the pipeline, and its directory's ``config.json``.

A prior maps CLIP *text* embeddings to plausible CLIP *image* embeddings (DALL-E 2's prior),
closing the modality gap before the mel diffusion model, which only ever saw image embeddings.
It is only meaningful in the CLIP space it was trained in: a prior for ViT-L/14 (768-d) is
nonsense for any other CLIP, even one of the same width, so every prior carries the
:class:`~clipsonic.encoders.ClipModelRef` of its space and pipelines refuse a mismatch.

``config.json``: ``{"format": "clipsonic-prior", "version": 1, "type": "clipsonic" | "karlo",
"clip_model": {...}, "clipsonic_version", ...}`` plus the type's own keys (ours.py, karlo.py);
one without a version is version 1.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from clipsonic import __version__
from clipsonic.encoders import ClipModelRef
from clipsonic.errors import ClipsonicError
from clipsonic.files import read_versioned_json, write_json_atomic

CONFIG_NAME = "config.json"
FORMAT, VERSION = "clipsonic-prior", 1


def read_prior_config(directory: Path) -> dict[str, Any]:
    """``directory/config.json`` of a prior directory."""
    if not (directory / CONFIG_NAME).is_file():
        raise ClipsonicError(f"{directory}: no {CONFIG_NAME}; not a prior directory")
    return read_versioned_json(directory / CONFIG_NAME, FORMAT, VERSION, unversioned=1)


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
        raise ClipsonicError(
            f"the prior works in the space of {prior.describe() if prior.fingerprint else f'{prior.model} ({prior.dim}-d)'} "
            f"but {what} uses {other.describe()}; train a prior with that CLIP (clipsonic train-prior "
            f"--clip-model {other.model}) or, if both names mean the same weights, attach with "
            f"--clip-model {other.model}"
        )


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
        ``generators``: one per row (:func:`~clipsonic.diffusion.rng.randn_per_row`); ``None`` = global RNG.
        ``guidance_scale`` / ``steps``: ``None`` = the prior's own defaults."""

    @abc.abstractmethod
    def to(self, device: str | torch.device, dtype: torch.dtype | None = None) -> Prior:
        """Move the weights; returns ``self``."""

    @abc.abstractmethod
    def _save_weights(self, directory: Path) -> dict[str, Any]:
        """Write the weights into ``directory``; returns the type's own config.json keys."""

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write a self-contained prior directory (``config.json`` + safetensors); returns it."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        settings = self._save_weights(directory)
        write_json_atomic(directory / CONFIG_NAME, {
            "format": FORMAT, "version": VERSION, "type": self.type_name, "clip_model": self.clip.to_dict(),
            **settings, "clipsonic_version": __version__})
        return directory

    def check_compatible(self, clip: ClipModelRef, what: str = "the pipeline") -> None:
        check_same_clip(self.clip, clip, what)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.clip.model!r}, {self.dim}-d)"
