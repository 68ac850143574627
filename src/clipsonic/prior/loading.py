"""Finding and loading a prior directory of any kind; no code from the directory is ever run.

:func:`load_prior` accepts our prior directory (``config.json`` with ``"type": "clipsonic"``),
a wrapped Karlo prior (``"type": "karlo"``), a ``train-prior`` run directory or a pipeline
directory (their ``prior/`` subfolder), and a raw diffusers ``PriorTransformer`` download.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from clipsonic.prior.base import CONFIG_NAME, Prior, PriorError
from clipsonic.prior.karlo import TYPE_NAME as KARLO_TYPE
from clipsonic.prior.karlo import find_karlo, load_karlo
from clipsonic.prior.ours import TYPE_NAME as OUR_TYPE
from clipsonic.prior.ours import DiffusionPrior, read_config

TYPES = (OUR_TYPE, KARLO_TYPE)


def _typed(path: Path) -> str | None:
    if not (path / CONFIG_NAME).is_file():
        return None
    kind = read_config(path).get("type")
    return kind if kind in TYPES else None


def resolve_prior_dir(path: str | os.PathLike) -> Path:
    """The directory that holds the prior for ``path`` (itself, or its ``prior/`` subfolder)."""
    path = Path(path)
    if not path.exists():
        raise PriorError(f"{path}: no such prior directory")
    for candidate in (path, path / "prior"):
        if _typed(candidate) is not None:
            return candidate
    if find_karlo(path) is not None:
        return path
    raise PriorError(
        f"{path} is not a prior directory: no config.json with \"type\" in {list(TYPES)} here or in "
        f"{path / 'prior'}, and no diffusers PriorTransformer; train one with `clipsonic train-prior` "
        "or point at a Karlo download (kakaobrain/karlo-v1-alpha)"
    )


def load_prior(path: str | os.PathLike, *, device: str | torch.device | None = None,
               dtype: torch.dtype | None = None, clip_model: str | None = None) -> Prior:
    """Load any prior ``path`` names (see module docstring).

    ``clip_model`` only matters for a raw diffusers prior, which does not record its CLIP: it
    names the CLIP it was trained with (default ``openai/clip-vit-large-patch14``, Karlo's).
    """
    directory = resolve_prior_dir(path)
    kind = _typed(directory)
    if kind == OUR_TYPE:
        prior: Prior = DiffusionPrior.from_config_dict(read_config(directory), directory)
    elif kind == KARLO_TYPE:
        prior = load_karlo(directory, read_config(directory))
    else:
        prior = load_karlo(directory, None, clip_model=clip_model)
    if device is not None or dtype is not None:
        prior.to(device or "cpu", dtype)
    return prior
