"""Diffusion priors: CLIP text embedding → CLIP image embedding (the paper's PD mode).

    from clipsonic.prior import load_prior, attach_prior
    prior = load_prior("pipeline/prior")          # ours (train-prior) or a Karlo PriorTransformer
    image_emb = prior.sample(texts, text_emb, encoder, generators=[...])   # [B, D], L2-normalised

Here, loading and attaching a prior directory; docs/architecture.md maps the modules.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from clipsonic.errors import ClipsonicError
from clipsonic.export import read_model_index, set_component
from clipsonic.prior.base import Prior, check_same_clip, read_prior_config
from clipsonic.prior.karlo import load_karlo
from clipsonic.prior.ours import DiffusionPrior, PriorConfig, PriorNet, prior_preset
from clipsonic.prior.train import PriorTrainConfig, train_prior

__all__ = ["DiffusionPrior", "Prior", "PriorConfig", "PriorNet", "PriorTrainConfig", "attach_prior", "check_same_clip",
           "load_prior", "prior_preset", "train_prior"]

log = logging.getLogger(__name__)


def load_prior(path: str | os.PathLike, *, device: str | torch.device | None = None,
               clip_model: str | None = None) -> Prior:
    """Load our prior directory (``config.json`` with ``"type": "clipsonic"``), a wrapped Karlo prior
    (``"type": "karlo"``), a ``train-prior`` run or a pipeline directory (their ``prior/``), or a raw
    diffusers ``PriorTransformer`` download, on ``device`` (default: the CPU). ``clip_model`` names the CLIP
    that a raw diffusers prior (which does not record it) was trained with (default Karlo's, ViT-L/14)."""
    path = Path(path)
    if not path.exists():
        raise ClipsonicError(f"{path}: no such prior directory")
    for directory in (path, path / "prior"):
        if (config := read_prior_config(directory)) is not None:
            break
    else:
        directory, config = path, None  # a raw diffusers prior, or none (load_karlo says which)
    if config is not None and config["type"] == DiffusionPrior.type_name:
        prior: Prior = DiffusionPrior.from_config_dict(config, directory)
    else:
        prior = load_karlo(directory, config, clip_model=clip_model)
    return prior.to(device) if device is not None else prior


def attach_prior(pipeline_dir: str | os.PathLike, prior_path: str | os.PathLike,
                 clip_model: str | None = None) -> Prior:
    """Copy the prior at ``prior_path`` into ``pipeline_dir/prior`` (a raw Karlo download is wrapped in our layout,
    so the pipeline stays self-contained); returns it. It is loaded and checked against the pipeline's CLIP first,
    so a broken prior or one of another CLIP space never replaces a working one; ``clip_model``: see load_prior."""
    index = read_model_index(pipeline_dir, complete=False)
    prior = load_prior(prior_path, clip_model=clip_model)
    if index.clip is None:
        raise ClipsonicError(f"{pipeline_dir}: its model_index.json names no CLIP, so no prior can be checked "
                             "against it")
    prior.check_compatible(index.clip, what=f"the pipeline {pipeline_dir}")
    set_component(pipeline_dir, "prior", prior.save_pretrained)
    log.info("attached the %s prior from %s to %s", prior.type_name, prior_path, Path(pipeline_dir) / "prior")
    return prior
