"""A pipeline directory (clipsonic.export's layout) → the components of ``CLIPSonicPipeline``, and back;
a pipeline made for another CLIP (fingerprint) is refused with both names.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from clipsonic.diffusion import DiffusionConfig
from clipsonic.encoders import load_clip, parse_dtype
from clipsonic.errors import ClipsonicError
from clipsonic.export import ModelIndex, load_stats, read_model_index, write_pipeline_dir
from clipsonic.models import MelUNet
from clipsonic.prior import load_prior
from clipsonic.vocoder import GriffinLimVocoder, load_vocoder

log = logging.getLogger(__name__)

def load_components(path: str | os.PathLike, device: str | torch.device | None, dtype: torch.dtype | str | None, *,
                    clip_model: str | None, vocoder: str | os.PathLike | None, check_clip: bool) -> dict[str, Any]:
    """Keyword arguments of ``CLIPSonicPipeline(...)`` for the directory ``path``."""
    index = read_model_index(path)
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    unet = MelUNet.from_pretrained(index.component_dir("unet"), device=device)
    diffusion = DiffusionConfig.load(index.component_dir("scheduler") / "config.json")
    if unet.config.cond_dim != index.clip.dim:
        raise ClipsonicError(f"{path}: the UNet takes {unet.config.cond_dim}-d conditions but the pipeline's CLIP "
                             f"{index.clip.model} is {index.clip.dim}-d; the directory mixes two models")
    if unet.config.learn_sigma != diffusion.learn_sigma:
        raise ClipsonicError(f"{path}: unet learn_sigma={unet.config.learn_sigma} but the scheduler's is "
                             f"{diffusion.learn_sigma}")
    # a bundled clip/ makes the folder self-contained; --clip-model still wins
    clip_source = clip_model or index.component_dir("clip") or index.clip.model
    encoder = load_clip(clip_source, device=device)
    if encoder.dim != index.clip.dim or (check_clip and encoder.fingerprint != index.clip.fingerprint):
        raise ClipsonicError(
            f"{path} was trained with {index.clip.describe()} but the CLIP loaded from "
            f"{clip_source} is {encoder.dim}-d with weights {encoder.fingerprint[:12]}; "
            "pass the CLIP the pipeline was trained with (--clip-model)")
    prior = None
    if index.component_dir("prior") is not None:
        prior = load_prior(index.component_dir("prior"), device=device)
        prior.check_compatible(index.clip, what=str(index.root))
    return dict(unet=unet, diffusion=diffusion, encoder=encoder, mel=index.mel, clip=index.clip,
                stats=load_stats(path) if index.component_dir("stats") is not None else None, prior=prior,
                vocoder=_load_vocoder(index, vocoder, device), training=index.training, dtype=parse_dtype(dtype))


def _load_vocoder(index: ModelIndex, override: str | os.PathLike | None, device: torch.device):
    """The override, else the pipeline's ``vocoder/``, else None (the pipeline falls back to Griffin-Lim)."""
    if override is not None and str(override) == "griffin-lim":
        return GriffinLimVocoder(index.mel).to(device)
    folder = Path(override) if override is not None else index.component_dir("vocoder")
    if folder is None:
        log.debug("%s has no vocoder component: using Griffin-Lim", index.root)
        return None
    return load_vocoder(folder, device=device, mel_config=index.mel)


def save_components(pipe, directory: str | os.PathLike) -> Path:
    """Write ``pipe`` with :func:`clipsonic.export.write_pipeline_dir` (prior and trained vocoder included)."""
    extra = {}
    if pipe.prior is not None:
        extra["prior"] = pipe.prior.save_pretrained
    if not pipe.vocoder_is_fallback:
        extra["vocoder"] = pipe.vocoder.save_pretrained
    return write_pipeline_dir(directory, unet=pipe.unet, diffusion=pipe.diffusion.config, mel=pipe.mel,
                              clip=pipe.clip, stats=pipe.stats, training=pipe.training, extra_components=extra)
