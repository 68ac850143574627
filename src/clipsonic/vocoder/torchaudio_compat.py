"""PyTorch stand-ins for the two torchaudio transforms ``bigvgan.discriminators`` imports.

Used only while importing that module when torchaudio is not installed (see
:func:`installed`); nothing else ever sees a ``torchaudio`` module from here.
- :class:`Spectrogram` with ``power=None``: complex STFT, centred, reflect-padded, Hann window,
  as ``torchaudio.transforms.Spectrogram`` defaults (used by the multi-band discriminator).
- :class:`Resample`: band-limited sinc interpolation with a Hann window, 6 zero crossings and a
  0.99 roll-off, as ``torchaudio.functional.resample``'s defaults (used by the CQT discriminator).
"""

from __future__ import annotations

import contextlib
import math
import sys
import types
from collections.abc import Iterator

import torch
import torch.nn.functional as F


class Spectrogram(torch.nn.Module):
    """Waveform ``[..., T]`` → complex STFT ``[..., n_fft//2+1, frames]`` (``power=None`` only)."""

    def __init__(self, n_fft: int = 400, win_length: int | None = None, hop_length: int | None = None,
                 power: float | None = 2.0) -> None:
        super().__init__()
        self.n_fft = n_fft
        self.win_length = win_length or n_fft
        self.hop_length = hop_length or self.win_length // 2
        self.power = power
        self.register_buffer("window", torch.hann_window(self.win_length))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        spec = torch.stft(x.reshape(-1, shape[-1]), self.n_fft, self.hop_length, self.win_length,
                          window=self.window, center=True, pad_mode="reflect", normalized=False,
                          onesided=True, return_complex=True)
        spec = spec.reshape(shape[:-1] + spec.shape[-2:])
        return spec if self.power is None else spec.abs().pow(self.power)


def sinc_resample_kernel(orig: int, new: int, width_zeros: int = 6, rolloff: float = 0.99) -> tuple[torch.Tensor, int]:
    """Polyphase kernel ``[new, 1, 2*width + orig]`` and its half width (``orig``, ``new`` coprime)."""
    base = min(orig, new) * rolloff
    width = math.ceil(width_zeros * orig / base)
    idx = torch.arange(-width, width + orig, dtype=torch.float64)[None, None] / orig
    t = (torch.arange(0, -new, -1, dtype=torch.float64)[:, None, None] / new + idx) * base
    t = t.clamp(-width_zeros, width_zeros)
    window = torch.cos(t * math.pi / width_zeros / 2) ** 2
    t = t * math.pi
    kernel = torch.where(t == 0, torch.ones_like(t), torch.sin(t) / t) * window * (base / orig)
    return kernel.float(), width


class Resample(torch.nn.Module):
    """Waveform ``[..., T]`` at ``orig_freq`` → ``[..., ceil(T * new / orig)]`` at ``new_freq``."""

    def __init__(self, orig_freq: int = 16000, new_freq: int = 16000) -> None:
        super().__init__()
        g = math.gcd(int(orig_freq), int(new_freq))
        self.orig, self.new = int(orig_freq) // g, int(new_freq) // g
        kernel, self.width = sinc_resample_kernel(self.orig, self.new)
        self.register_buffer("kernel", kernel, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.orig == self.new:
            return x
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        padded = F.pad(flat, (self.width, self.width + self.orig))
        out = F.conv1d(padded[:, None], self.kernel.to(x.dtype), stride=self.orig)  # [N, new, frames]
        out = out.transpose(1, 2).reshape(flat.shape[0], -1)
        out = out[..., : math.ceil(self.new * shape[-1] / self.orig)]
        return out.reshape(shape[:-1] + out.shape[-1:])


@contextlib.contextmanager
def installed() -> Iterator[None]:
    """Make ``import torchaudio.transforms`` resolve to these stand-ins inside the block only."""
    package = types.ModuleType("torchaudio")
    transforms = types.ModuleType("torchaudio.transforms")
    transforms.Spectrogram = Spectrogram
    transforms.Resample = Resample
    package.transforms = transforms
    saved = {name: sys.modules.get(name) for name in ("torchaudio", "torchaudio.transforms")}
    sys.modules["torchaudio"], sys.modules["torchaudio.transforms"] = package, transforms
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
