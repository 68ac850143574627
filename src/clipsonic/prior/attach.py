"""``attach_prior``: put a prior into a pipeline directory as its ``prior/`` component.

The prior is loaded first (so a broken one never replaces a working one), checked against the
pipeline's CLIP (a prior of another CLIP space is refused with both names), written in our layout
into a temporary folder inside the pipeline and renamed into place; then ``model_index.json``
names it and the model card is rewritten. A raw Karlo download is converted to the wrapped layout
(karlo.py), so the pipeline folder is self-contained.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from pathlib import Path

from clipsonic.config import write_json_atomic
from clipsonic.prior.base import Prior
from clipsonic.prior.loading import load_prior

log = logging.getLogger(__name__)


def _swap_in(tmp: Path, target: Path) -> None:
    """Rename the complete ``tmp`` to ``target``; an old ``target`` is renamed aside first, then deleted."""
    old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
    if target.exists():
        os.replace(target, old)
    try:
        os.replace(tmp, target)
    except BaseException:
        if old.exists():
            os.replace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def attach_prior(pipeline_dir: str | os.PathLike, prior_path: str | os.PathLike,
                 clip_model: str | None = None) -> Prior:
    """Copy the prior at ``prior_path`` into ``pipeline_dir/prior``; returns the loaded prior.

    ``clip_model`` names the CLIP of a raw diffusers prior (which does not record it); it must then
    be the name in the pipeline's model_index.json.
    """
    from clipsonic.export import MODEL_INDEX_NAME, load_stats, model_card, read_model_index

    pipeline_dir = Path(pipeline_dir)
    index = read_model_index(pipeline_dir)
    prior = load_prior(prior_path, clip_model=clip_model)
    prior.check_compatible(index.clip, what=f"the pipeline {pipeline_dir}")
    tmp = pipeline_dir / f".prior.tmp-{uuid.uuid4().hex[:8]}"
    try:
        prior.save_pretrained(tmp)
        _swap_in(tmp, pipeline_dir / "prior")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    data = json.loads((pipeline_dir / MODEL_INDEX_NAME).read_text())
    data["components"]["prior"] = "prior"
    write_json_atomic(pipeline_dir / MODEL_INDEX_NAME, data)
    stats = load_stats(pipeline_dir) if index.component_dir("stats") is not None else None
    (pipeline_dir / "README.md").write_text(model_card(data, stats))
    log.info("attached the %s prior from %s to %s", prior.type_name, prior_path, pipeline_dir / "prior")
    return prior
