"""The discriminators of BigVGAN's recipe for 16 kHz audio: the multi-period discriminator (MPD, HiFi-GAN) plus
UnivNet's multi-resolution STFT discriminator (``mrd``, BigVGAN v1, the default), or BigVGAN v2's ``mbd``
(descript-audio-codec's multi-band) or ``cqtd`` (multi-scale sub-band CQT, with 7 octaves instead of 9 so that every
bin from 32.7 Hz stays below the 8 kHz Nyquist). MPD and MRD are copied from ``bigvgan/discriminators.py`` (MIT,
NVIDIA) as that module imports torchaudio at its top; ``mbd`` and ``cqtd`` need torchaudio (and nnAudio) to load it.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn import Conv2d
from torch.nn.utils import weight_norm

from clipsonic.config import Config
from clipsonic.errors import ClipsonicError

CQT_FMIN = 32.70  # Hz: nnAudio's default lowest CQT bin


@dataclasses.dataclass(frozen=True)
class DiscriminatorConfig(Config):
    """Which discriminators judge the generator, and how wide they are."""

    kind: Literal["mrd", "mbd", "cqtd"] = "mrd"
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
        if self.channel_mult <= 0:
            raise ValueError(f"channel_mult must be > 0, got {self.channel_mult}")
        if len(self.mrd_resolutions) != 3 or any(len(r) != 3 for r in self.mrd_resolutions):
            raise ValueError("mrd_resolutions must be three (n_fft, hop, win) triples (bigvgan's MRD needs 3)")
        if not len(self.cqtd_hop_lengths) == len(self.cqtd_n_octaves) == len(self.cqtd_bins_per_octaves):
            raise ValueError("cqtd_hop_lengths, cqtd_n_octaves and cqtd_bins_per_octaves must have equal length")

    def check_cqt_range(self, sample_rate: int) -> None:
        """Every CQT bin, up to ``CQT_FMIN * 2 ** (octaves - 1 / bins)``, must lie below Nyquist."""
        nyquist = sample_rate / 2
        for octaves, bins in zip(self.cqtd_n_octaves, self.cqtd_bins_per_octaves, strict=True):
            top = CQT_FMIN * 2 ** (octaves - 1 / bins)
            if top >= nyquist:
                fit = next(n for n in range(octaves, 0, -1) if CQT_FMIN * 2 ** (n - 1 / bins) < nyquist)
                raise ClipsonicError(f"a CQT discriminator with {octaves} octaves reaches {top:.0f} Hz, above the "
                                     f"{nyquist:.0f} Hz Nyquist of {sample_rate} Hz audio; use at most {fit} octaves")


def build_discriminator(config: DiscriminatorConfig, sample_rate: int) -> nn.Module:
    """MPD + the configured second discriminator as one module: ``forward(y, y_hat)`` on waveforms ``[B, 1, T]``
    returns ``(real_scores, fake_scores, real_feature_maps, fake_feature_maps)``, lists over all sub-discriminators."""
    # bigvgan's classes read their settings, by its names, from its dict-with-attributes
    from bigvgan.env import AttrDict

    h = AttrDict({**config.to_dict(), "discriminator_channel_mult": config.channel_mult,
                  "resolutions": config.mrd_resolutions, "sampling_rate": sample_rate})
    if config.kind == "cqtd":
        config.check_cqt_range(sample_rate)
    with warnings.catch_warnings():  # torch.nn.utils.weight_norm is deprecated in favour of parametrizations
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", UserWarning)
        try:
            if config.kind == "mrd":
                second = MultiResolutionDiscriminator(h)
            else:
                # imports torchaudio; its CQT discriminator imports nnAudio
                from bigvgan import discriminators

                second = (discriminators.MultiBandDiscriminator if config.kind == "mbd"
                          else discriminators.MultiScaleSubbandCQTDiscriminator)(h)
        except ImportError as exc:
            raise ClipsonicError(
                f"the '{config.kind}' discriminator needs torchaudio{' and nnAudio' if config.kind == 'cqtd' else ''} "
                f"({exc}); `pip install torchaudio nnAudio` (a build matching your torch), or use --discriminator mrd"
            ) from None
        return CombinedDiscriminator([MultiPeriodDiscriminator(h), second])


def _conv_stack(x, convs, conv_post):
    """The shared tail of DiscriminatorP/R's forward: leaky-ReLU(0.1) convs → (flattened scores, feature maps)."""
    fmap = []
    for layer in convs:
        x = F.leaky_relu(layer(x), 0.1)
        fmap.append(x)
    x = conv_post(x)
    fmap.append(x)
    return torch.flatten(x, 1, -1), fmap


# Copied from bigvgan.discriminators.DiscriminatorP (weight norm only: we never set use_spectral_norm;
# get_padding(5, 1) = 2; its four strided convs built in a loop, the tail of its forward shared with DiscriminatorR)
class DiscriminatorP(torch.nn.Module):
    def __init__(self, h, period, kernel_size=5, stride=3):
        super().__init__()
        self.period = period
        channels = [1] + [int(c * h.discriminator_channel_mult) for c in (32, 128, 512, 1024)]
        self.convs = nn.ModuleList(
            [weight_norm(Conv2d(c_in, c_out, (kernel_size, 1), (stride, 1), padding=(2, 0)))
             for c_in, c_out in zip(channels[:-1], channels[1:], strict=True)]
            + [weight_norm(Conv2d(channels[-1], channels[-1], (kernel_size, 1), 1, padding=(2, 0)))]
        )
        self.conv_post = weight_norm(Conv2d(channels[-1], 1, (3, 1), 1, padding=(1, 0)))

    def forward(self, x):
        # 1d to 2d: [B, C, T] → [B, C, T / period, period], reflect-padded to a multiple of the period
        b, c, t = x.shape
        if t % self.period != 0:
            x = F.pad(x, (0, self.period - (t % self.period)), "reflect")
        return _conv_stack(x.view(b, c, -1, self.period), self.convs, self.conv_post)


# Copied from bigvgan.discriminators.MultiPeriodDiscriminator (without its print of the periods; its forward
# gathers the same four lists)
class MultiPeriodDiscriminator(torch.nn.Module):
    def __init__(self, h):
        super().__init__()
        self.discriminators = nn.ModuleList([DiscriminatorP(h, rs) for rs in h.mpd_reshapes])

    def forward(self, y, y_hat):
        real = [d(y) for d in self.discriminators]
        fake = [d(y_hat) for d in self.discriminators]
        return [s for s, _ in real], [s for s, _ in fake], [f for _, f in real], [f for _, f in fake]


# Copied from bigvgan.discriminators.DiscriminatorR (weight norm only, without the mrd_* overrides we never set
# and its length assert (DiscriminatorConfig checks it), its three strided convs built in a loop, the tail of
# its forward shared with DiscriminatorP, and with the rectangular STFT window torch.stft uses by default
# passed explicitly: same numbers, no warning)
class DiscriminatorR(nn.Module):
    def __init__(self, cfg, resolution):
        super().__init__()
        self.resolution = resolution
        ch = int(32 * cfg.discriminator_channel_mult)
        self.convs = nn.ModuleList(
            [weight_norm(nn.Conv2d(1, ch, (3, 9), padding=(1, 4)))]
            + [weight_norm(nn.Conv2d(ch, ch, (3, 9), stride=(1, 2), padding=(1, 4))) for _ in range(3)]
            + [weight_norm(nn.Conv2d(ch, ch, (3, 3), padding=(1, 1)))]
        )
        self.conv_post = weight_norm(nn.Conv2d(ch, 1, (3, 3), padding=(1, 1)))

    def forward(self, x):
        return _conv_stack(self.spectrogram(x).unsqueeze(1), self.convs, self.conv_post)

    def spectrogram(self, x):  # [B, 1, T] → STFT magnitudes [B, F, TT]
        n_fft, hop_length, win_length = self.resolution
        pad = int((n_fft - hop_length) / 2)
        x = F.pad(x, (pad, pad), mode="reflect").squeeze(1)
        window = torch.ones(win_length, device=x.device, dtype=x.dtype)
        x = torch.stft(x, n_fft=n_fft, hop_length=hop_length, win_length=win_length, window=window,
                       center=False, return_complex=True)
        return torch.norm(torch.view_as_real(x), p=2, dim=-1)


# Copied from bigvgan.discriminators.MultiResolutionDiscriminator (its forward is MultiPeriodDiscriminator's;
# without its length assert and unused debug flag)
class MultiResolutionDiscriminator(MultiPeriodDiscriminator):
    def __init__(self, cfg):
        nn.Module.__init__(self)
        self.discriminators = nn.ModuleList([DiscriminatorR(cfg, resolution) for resolution in cfg.resolutions])


# Copied from bigvgan.discriminators.CombinedDiscriminator (upstream's attribute spelling kept; its forward
# concatenates each of the four lists over the sub-discriminators)
class CombinedDiscriminator(nn.Module):
    def __init__(self, list_discriminator):
        super().__init__()
        self.discrimiantor = nn.ModuleList(list_discriminator)

    def forward(self, y, y_hat):
        outputs = [disc(y, y_hat) for disc in self.discrimiantor]
        return tuple([x for out in outputs for x in out[i]] for i in range(4))
