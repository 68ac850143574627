"""``mel-stats``: a weight-free embedder for plumbing and sanity checks — NOT a published metric.

Per 0.96-s patch of VGGish's log-mel, each band's mean and std over time → 128 numbers. Its FAD is
not comparable with any published FAD (those use VGGish, PANNs or CLAP), and reports say so.
"""

from __future__ import annotations

import numpy as np

from clipsonic.embedders import vggish_input
from clipsonic.embedders.base import AudioEmbedder
from clipsonic.embedders.vggish import pad_to_one_patch
from clipsonic.errors import ClipsonicError


class MelStatsEmbedder(AudioEmbedder):
    name = "mel-stats"
    sample_rate = vggish_input.SAMPLE_RATE
    dim = 2 * vggish_input.NUM_BANDS
    comparable = False
    cache_id = "mel-stats-v1"
    description = (
        "mel-stats (weight-free: per-band mean and std of a 0.96-s log-mel patch). A plumbing/sanity "
        "metric: its FAD is NOT comparable with published FADs (use --embedder vggish or clap for those)")

    def __init__(self, weights: None = None, device: str | None = None) -> None:
        if weights is not None:
            raise ClipsonicError("mel-stats needs no weights; drop --embedder-weights")

    def _embed(self, wav: np.ndarray) -> np.ndarray:
        patches = vggish_input.waveform_to_patches(pad_to_one_patch(wav, self.name))  # [N, 96, 64]
        return np.concatenate([patches.mean(axis=1), patches.std(axis=1)], axis=1)  # [N, 128]
