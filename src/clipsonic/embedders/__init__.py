"""Audio embedders for FAD and the CLAP score, behind one small interface (:class:`AudioEmbedder`).

- ``mel-stats``: per-band mean/std of 0.96-s log-mel patches; no weights; a sanity check only.
- ``vggish``: VGGish, 128-d per 0.96 s at 16 kHz (the classic FAD); local safetensors.
- ``panns``: PANNs CNN14, 2048-d per clip at 32 kHz; local ``Cnn14_mAP=0.431.pth``.
- ``clap``: LAION-CLAP, 512-d per 10-s clip at 48 kHz, and texts; local checkpoint + ``laion-clap``.

Each heavy model is imported only when asked for; a missing package or weights file raises
:class:`EmbedderError` naming the file and how to get it.
"""

from __future__ import annotations

import os

from clipsonic.embedders.base import AudioEmbedder, EmbedderError, TextAudioEmbedder

EMBEDDERS = ("mel-stats", "vggish", "panns", "clap")

__all__ = ["EMBEDDERS", "AudioEmbedder", "EmbedderError", "TextAudioEmbedder", "load_embedder"]


def load_embedder(name: str, weights: str | os.PathLike | None = None, device: str | None = None) -> AudioEmbedder:
    """Build the embedder called ``name`` (one of :data:`EMBEDDERS`) from a local weights path."""
    if name == "mel-stats":
        from clipsonic.embedders.mel_stats import MelStatsEmbedder

        if weights is not None:
            raise EmbedderError("mel-stats needs no weights; drop --embedder-weights")
        return MelStatsEmbedder()
    if name == "vggish":
        from clipsonic.embedders.vggish import VGGishEmbedder

        return VGGishEmbedder(weights, device=device)
    if name == "panns":
        from clipsonic.embedders.panns import PannsEmbedder

        return PannsEmbedder(weights, device=device)
    if name == "clap":
        from clipsonic.embedders.clap import ClapEmbedder

        return ClapEmbedder(weights, device=device)
    raise EmbedderError(f"unknown embedder {name!r}; choose one of {', '.join(EMBEDDERS)}")
