"""The bigvgan package's discriminators, configured for 16 kHz.

Always the multi-period discriminator (MPD, HiFi-GAN), plus one of:
- ``mrd``: UnivNet's multi-resolution STFT discriminator (BigVGAN v1, the default);
- ``mbd``: the multi-band discriminator of descript-audio-codec (BigVGAN v2 option);
- ``cqtd``: the multi-scale sub-band CQT discriminator (BigVGAN v2). Its default 9 octaves
  from 32.7 Hz reach far above the 8 kHz Nyquist of 16 kHz audio; 7 octaves keep every bin
  below 8 kHz (top bin ≈ 4.1 kHz; the MPD covers the rest).

``bigvgan.discriminators`` imports torchaudio at module level, for MBD's spectrogram and CQTD's
resampler only. torchaudio has no build for every torch release (none for the CPU torch 2.13
this project tests on), so when it is missing we import the module with small PyTorch
stand-ins for those two transforms (:mod:`clipsonic.vocoder.torchaudio_compat`), visible only
during that import.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import io
import logging
import sys
import warnings
from typing import Any

import torch

from clipsonic.config import Config
from clipsonic.vocoder.base import VocoderError

log = logging.getLogger(__name__)

DISCRIMINATOR_KINDS = ("mrd", "mbd", "cqtd")


@dataclasses.dataclass(frozen=True)
class DiscriminatorConfig(Config):
    """Which discriminators judge the generator, and how wide they are."""

    kind: str = "mrd"
    # Scales every MPD/MRD channel count (BigVGAN uses 1.0). Small generators train with small
    # discriminators: a 1.0-wide pair has ~40M parameters and dominates a CPU step.
    channel_mult: float = 1.0
    mpd_reshapes: tuple[int, ...] = (2, 3, 5, 7, 11)
    # (n_fft, hop, win) per MRD branch, as BigVGAN v1's 22 kHz config.
    mrd_resolutions: tuple[tuple[int, int, int], ...] = ((1024, 120, 600), (2048, 240, 1200), (512, 50, 240))
    mbd_fft_sizes: tuple[int, ...] = (2048, 1024, 512)
    cqtd_hop_lengths: tuple[int, ...] = (512, 256, 256)
    cqtd_n_octaves: tuple[int, ...] = (7, 7, 7)
    cqtd_bins_per_octaves: tuple[int, ...] = (24, 36, 48)

    def __post_init__(self) -> None:
        object.__setattr__(self, "mrd_resolutions", tuple(tuple(r) for r in self.mrd_resolutions))
        if self.kind not in DISCRIMINATOR_KINDS:
            raise ValueError(f"discriminator kind must be one of {DISCRIMINATOR_KINDS}, got {self.kind!r}")
        if self.channel_mult <= 0:
            raise ValueError(f"channel_mult must be > 0, got {self.channel_mult}")
        if len(self.mrd_resolutions) != 3 or any(len(r) != 3 for r in self.mrd_resolutions):
            raise ValueError("mrd_resolutions must be three (n_fft, hop, win) triples (bigvgan's MRD needs 3)")
        n = len(self.cqtd_hop_lengths)
        if len(self.cqtd_n_octaves) != n or len(self.cqtd_bins_per_octaves) != n:
            raise ValueError("cqtd_hop_lengths, cqtd_n_octaves and cqtd_bins_per_octaves must have equal length")

    def check_cqt_range(self, sample_rate: int) -> None:
        """Every CQT bin (from 32.7 Hz, nnAudio's default fmin) must lie below Nyquist."""
        for octaves, bins in zip(self.cqtd_n_octaves, self.cqtd_bins_per_octaves, strict=False):
            top = 32.70 * 2 ** (octaves - 1 / bins)
            if top >= sample_rate / 2:
                raise VocoderError(
                    f"a CQT discriminator with {octaves} octaves reaches {top:.0f} Hz, above the "
                    f"{sample_rate / 2:.0f} Hz Nyquist of {sample_rate} Hz audio; use at most "
                    f"{_max_octaves(sample_rate, bins)} octaves"
                )

    def hparams(self, sample_rate: int) -> Any:
        from bigvgan.env import AttrDict

        d = self.to_dict()
        return AttrDict(
            discriminator_channel_mult=self.channel_mult, use_spectral_norm=False,
            mpd_reshapes=d["mpd_reshapes"], resolutions=d["mrd_resolutions"], mbd_fft_sizes=d["mbd_fft_sizes"],
            cqtd_hop_lengths=d["cqtd_hop_lengths"], cqtd_n_octaves=d["cqtd_n_octaves"],
            cqtd_bins_per_octaves=d["cqtd_bins_per_octaves"], sampling_rate=sample_rate,
        )


def _max_octaves(sample_rate: int, bins: int) -> int:
    n = 1
    while 32.70 * 2 ** (n + 1 - 1 / bins) < sample_rate / 2:
        n += 1
    return n


def bigvgan_discriminators():
    """``bigvgan.discriminators``, importing it with torchaudio stand-ins if torchaudio is absent."""
    if "bigvgan.discriminators" in sys.modules:
        return sys.modules["bigvgan.discriminators"]
    try:
        import torchaudio  # noqa: F401
    except ImportError:
        from clipsonic.vocoder import torchaudio_compat

        with torchaudio_compat.installed():
            return importlib.import_module("bigvgan.discriminators")
    return importlib.import_module("bigvgan.discriminators")


def build_discriminator(config: DiscriminatorConfig, sample_rate: int) -> torch.nn.Module:
    """MPD + the configured second discriminator as one module.

    ``forward(y, y_hat)`` with waveforms ``[B, 1, T]`` returns bigvgan's 4-tuple
    ``(real_scores, fake_scores, real_feature_maps, fake_feature_maps)``, lists over all sub-discriminators.
    """
    D = bigvgan_discriminators()
    h = config.hparams(sample_rate)
    if config.kind == "cqtd":
        config.check_cqt_range(sample_rate)
    second = {"mrd": D.MultiResolutionDiscriminator, "mbd": D.MultiBandDiscriminator,
              "cqtd": D.MultiScaleSubbandCQTDiscriminator}[config.kind]
    chatter = io.StringIO()
    with contextlib.redirect_stdout(chatter), warnings.catch_warnings():
        # bigvgan prints its settings and uses the deprecated torch.nn.utils.weight_norm
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", UserWarning)
        module = D.CombinedDiscriminator([D.MultiPeriodDiscriminator(h), second(h)])
    for line in chatter.getvalue().splitlines():
        log.debug("bigvgan: %s", line)
    return module
