"""Audio embedders for FAD and the CLAP score behind one interface (:class:`AudioEmbedder`), from local weights:
``mel-stats`` (weight-free sanity check), ``vggish`` (the paper's FAD), ``panns`` (CNN14) and ``clap`` (LAION-CLAP,
which also embeds texts)."""

from __future__ import annotations

import os

from clipsonic.embedders.base import AudioEmbedder
from clipsonic.embedders.clap import ClapEmbedder
from clipsonic.embedders.panns import PannsEmbedder
from clipsonic.embedders.vggish import MelStatsEmbedder, VGGishEmbedder
from clipsonic.errors import ClipsonicError

EMBEDDERS: dict[str, type[AudioEmbedder]] = {"mel-stats": MelStatsEmbedder, "vggish": VGGishEmbedder,
                                             "panns": PannsEmbedder, "clap": ClapEmbedder}

__all__ = ["EMBEDDERS", "AudioEmbedder", "ClapEmbedder", "load_embedder"]


def load_embedder(name: str, weights: str | os.PathLike | None = None, device: str | None = None) -> AudioEmbedder:
    """Build the embedder called ``name`` (a key of :data:`EMBEDDERS`) from a local weights path."""
    if name not in EMBEDDERS:
        raise ClipsonicError(f"unknown embedder {name!r}; choose one of {', '.join(EMBEDDERS)}")
    return EMBEDDERS[name](weights, device=device)
