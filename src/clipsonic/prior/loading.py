"""Finding, loading and attaching a prior directory of any kind; no code from the directory is ever run.

:func:`load_prior` accepts our prior directory (``config.json`` with ``"type": "clipsonic"``), a
wrapped Karlo prior (``"type": "karlo"``), a ``train-prior`` run directory or a pipeline directory
(their ``prior/`` subfolder), and a raw diffusers ``PriorTransformer`` download.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from clipsonic.errors import ClipsonicError
from clipsonic.export import read_model_index, set_component
from clipsonic.files import read_json
from clipsonic.prior.base import CONFIG_NAME, FORMAT, Prior, read_prior_config
from clipsonic.prior.karlo import TYPE_NAME as KARLO_TYPE
from clipsonic.prior.karlo import find_karlo, load_karlo
from clipsonic.prior.ours import TYPE_NAME as OUR_TYPE
from clipsonic.prior.ours import DiffusionPrior

log = logging.getLogger(__name__)
TYPES = (OUR_TYPE, KARLO_TYPE)


def _is_prior_dir(path: Path) -> bool:
    """Whether ``path/config.json`` is a prior's (a run's or a pipeline's own config.json is not)."""
    if not (path / CONFIG_NAME).is_file():
        return False
    data = read_json(path / CONFIG_NAME, "config.json")
    return isinstance(data, dict) and data.get("format", FORMAT) == FORMAT and data.get("type") in TYPES


def resolve_prior_dir(path: str | os.PathLike) -> Path:
    """The directory that holds the prior for ``path`` (itself, or its ``prior/`` subfolder)."""
    path = Path(path)
    if not path.exists():
        raise ClipsonicError(f"{path}: no such prior directory")
    for candidate in (path, path / "prior"):
        if _is_prior_dir(candidate):
            return candidate
    if find_karlo(path) is not None:
        return path
    raise ClipsonicError(
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
    if not _is_prior_dir(directory):
        prior: Prior = load_karlo(directory, None, clip_model=clip_model)
    elif (config := read_prior_config(directory))["type"] == OUR_TYPE:
        prior = DiffusionPrior.from_config_dict(config, directory)
    else:
        prior = load_karlo(directory, config)
    if device is not None or dtype is not None:
        prior.to(device or "cpu", dtype)
    return prior


def attach_prior(pipeline_dir: str | os.PathLike, prior_path: str | os.PathLike,
                 clip_model: str | None = None) -> Prior:
    """Copy the prior at ``prior_path`` into ``pipeline_dir/prior`` (in our layout: a raw Karlo download is
    wrapped, so the pipeline stays self-contained); returns the loaded prior.

    The prior is loaded and checked against the pipeline's CLIP first, so a broken prior or one of
    another CLIP space never replaces a working one. ``clip_model`` names the CLIP of a raw diffusers
    prior (which does not record it).
    """
    index = read_model_index(pipeline_dir, complete=False)
    prior = load_prior(prior_path, clip_model=clip_model)
    if index.clip is None:
        raise ClipsonicError(f"{pipeline_dir}: its model_index.json names no CLIP, so no prior can be checked against it")
    prior.check_compatible(index.clip, what=f"the pipeline {pipeline_dir}")
    set_component(pipeline_dir, "prior", prior.save_pretrained)
    log.info("attached the %s prior from %s to %s", prior.type_name, prior_path, Path(pipeline_dir) / "prior")
    return prior
