"""Audio embedders for FAD and the CLAP score, behind one small interface (:class:`AudioEmbedder`).

- ``mel-stats``: per-band mean/std of 0.96-s log-mel patches; no weights; a sanity check only.
- ``vggish``: VGGish, 128-d per 0.96 s at 16 kHz (the classic FAD); local safetensors.
- ``panns``: PANNs CNN14, 2048-d per clip at 32 kHz; local ``Cnn14_mAP=0.431.pth``.
- ``clap``: LAION-CLAP, 512-d per 10-s clip at 48 kHz, and texts (``embed_texts``); local checkpoint
  + the optional ``laion-clap`` package.
"""

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
