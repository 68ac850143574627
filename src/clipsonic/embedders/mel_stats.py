"""``mel-stats``: a weight-free embedder for plumbing and sanity checks — NOT a published metric.

Per 0.96-s patch of VGGish's log-mel (same front end, :mod:`.vggish_input`), the mean and the
standard deviation over time of each of the 64 bands → 128 numbers. It needs no download, so
every part of evaluation can run anywhere, and it does move with spectral balance and dynamics;
but a FAD computed on it is not comparable with any published FAD (those use VGGish, PANNs or
CLAP), and reports say so.
"""

from __future__ import annotations

import numpy as np

from clipsonic.embedders import vggish_input
from clipsonic.embedders.base import AudioEmbedder
from clipsonic.embedders.vggish import pad_to_one_patch


class MelStatsEmbedder(AudioEmbedder):
    name = "mel-stats"
    sample_rate = vggish_input.SAMPLE_RATE
    dim = 2 * vggish_input.NUM_BANDS
    comparable = False
    description = (
        "mel-stats (weight-free: per-band mean and std of a 0.96-s log-mel patch). A plumbing/sanity "
        "metric: its FAD is NOT comparable with published FADs (use --embedder vggish or clap for those)"
    )

    @property
    def cache_id(self) -> str:
        return "mel-stats-v1"

    def _embed(self, wav: np.ndarray) -> np.ndarray:
        patches = vggish_input.waveform_to_patches(pad_to_one_patch(wav, self.name))  # [N, 96, 64]
        return np.concatenate([patches.mean(axis=1), patches.std(axis=1)], axis=1)  # [N, 128]
