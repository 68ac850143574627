"""What every diffusion prior offers the pipeline, and its directory's ``config.json``.

A prior maps CLIP *text* embeddings to the *image* embeddings the mel model saw (DALL-E 2's prior), closing the
modality gap; it is only meaningful in the CLIP space (:class:`~clipsonic.encoders.ClipModelRef`) it was trained in.

``config.json``: ``{"format": "clipsonic-prior", "version": 1, "type": "clipsonic" | "karlo",
"clip_model": {...}, "clipsonic_version", ...}`` plus the type's own keys; unversioned = version 1.
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
from clipsonic.files import read_json, read_versioned_json, write_json_atomic

CONFIG_NAME = "config.json"
FORMAT, VERSION = "clipsonic-prior", 1
TYPES = ("clipsonic", "karlo")  # ours.py, karlo.py


def read_prior_config(directory: Path) -> dict[str, Any] | None:
    """``directory/config.json`` if it is a prior's, else None (a run's or a pipeline's config.json is not)."""
    path = directory / CONFIG_NAME
    data = read_json(path, CONFIG_NAME) if path.is_file() else None
    if not isinstance(data, dict) or data.get("format", FORMAT) != FORMAT or data.get("type") not in TYPES:
        return None
    return read_versioned_json(path, FORMAT, VERSION, unversioned=1)


def check_same_clip(prior: ClipModelRef, other: ClipModelRef, what: str = "the pipeline") -> None:
    """Refuse a prior made in another CLIP space than ``other``, naming both: same width, then the same
    weight fingerprints when both are known, else the same model names (Karlo's records a name only)."""
    same = prior.dim == other.dim and (
        prior.fingerprint == other.fingerprint if prior.fingerprint and other.fingerprint
        else prior.model == other.model
    )
    if not same:
        space = prior.describe() if prior.fingerprint else f"{prior.model} ({prior.dim}-d)"
        raise ClipsonicError(
            f"the prior works in the space of {space} "
            f"but {what} uses {other.describe()}; train a prior with that CLIP (clipsonic train-prior "
            f"--clip-model {other.model}) or, if both names mean the same weights, attach with "
            f"--clip-model {other.model}"
        )


class Prior(abc.ABC):
    """A loaded prior: the network ``net`` (frozen) working in the CLIP space ``clip``."""

    type_name: str = ""

    def __init__(self, net: torch.nn.Module, clip: ClipModelRef) -> None:
        self.net = net.eval().requires_grad_(False)
        self.clip = clip

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def to(self, device: str | torch.device) -> Prior:
        self.net.to(device)
        return self

    @abc.abstractmethod
    def sample(self, texts: Sequence[str], text_emb: torch.Tensor, encoder, *,
               generators: Sequence[torch.Generator] | None = None, guidance_scale: float | None = None,
               steps: int | None = None) -> torch.Tensor:
        """L2-normalised image embeddings ``[B, D]`` (float32, CPU) for ``texts`` (B strings) whose L2-normalised
        CLIP text embeddings are ``text_emb`` ``[B, D]``; ``encoder`` is the pipeline's
        :class:`~clipsonic.encoders.ClipEncoder` (priors that read token states call it). ``generators``: one per
        row (:func:`~clipsonic.diffusion.rng.randn_per_row`); ``None`` = global RNG. ``guidance_scale`` /
        ``steps``: ``None`` = the prior's own defaults."""

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
