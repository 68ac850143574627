"""Diffusion priors: CLIP text embedding → CLIP image embedding (the paper's PD mode).

    from clipsonic.prior import load_prior, attach_prior
    prior = load_prior("pipeline/prior")          # ours (train-prior) or a Karlo PriorTransformer
    image_emb = prior.sample(texts, text_emb, encoder, generators=[...])   # [B, D], L2-normalised

Files: ``network.py`` (our PriorNet), ``ours.py`` (it + Gaussian diffusion, its directory),
``karlo.py`` (diffusers PriorTransformer checkpoints), ``base.py`` (what they share, config.json),
``loading.py`` (any prior directory; attaching one to a pipeline), ``data.py`` (image-caption
pairs), ``train.py`` (train-prior).
"""

from clipsonic.prior.base import Prior, check_same_clip
from clipsonic.prior.loading import attach_prior, load_prior, resolve_prior_dir
from clipsonic.prior.network import PRIOR_PRESETS, PriorNet, PriorNetConfig
from clipsonic.prior.ours import DiffusionPrior, PriorConfig
from clipsonic.prior.train import PriorTrainConfig, train_prior

__all__ = [
    "PRIOR_PRESETS",
    "DiffusionPrior",
    "Prior",
    "PriorConfig",
    "PriorNet",
    "PriorNetConfig",
    "PriorTrainConfig",
    "attach_prior",
    "check_same_clip",
    "load_prior",
    "resolve_prior_dir",
    "train_prior",
]
