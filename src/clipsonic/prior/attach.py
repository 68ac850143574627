"""``attach_prior``: put a prior into a pipeline directory as its ``prior/`` component.

The prior is loaded first (so a broken one never replaces a working one), checked against the
pipeline's CLIP (a prior of another CLIP space is refused with both names), written in our layout
into a temporary folder inside the pipeline and renamed into place; then ``model_index.json``
names it and the model card is rewritten. A raw Karlo download is converted to the wrapped layout
(karlo.py), so the pipeline folder is self-contained.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from clipsonic.prior.base import Prior
from clipsonic.prior.loading import load_prior

log = logging.getLogger(__name__)


def attach_prior(pipeline_dir: str | os.PathLike, prior_path: str | os.PathLike,
                 clip_model: str | None = None) -> Prior:
    """Copy the prior at ``prior_path`` into ``pipeline_dir/prior``; returns the loaded prior.

    ``clip_model`` names the CLIP of a raw diffusers prior (which does not record it); it must then
    be the name in the pipeline's model_index.json.
    """
    from clipsonic.export import read_model_index, set_component

    pipeline_dir = Path(pipeline_dir)
    index = read_model_index(pipeline_dir)
    prior = load_prior(prior_path, clip_model=clip_model)
    prior.check_compatible(index.clip, what=f"the pipeline {pipeline_dir}")
    set_component(pipeline_dir, "prior", prior.save_pretrained)
    log.info("attached the %s prior from %s to %s", prior.type_name, prior_path, pipeline_dir / "prior")
    return prior
