"""The paper's mel front end: BigVGAN's log-mel, its fixed [-1, 1] scaling, and Griffin-Lim.

All functions take and return torch tensors and work on batches. The log-mel matches
``bigvgan.meldataset.mel_spectrogram`` numerically (tested): reflect-pad (n_fft - hop)/2 on
each side, STFT with ``center=False`` and a Hann window, magnitude sqrt(re² + im² + 1e-9),
librosa's Slaney mel basis, then ln(clamp(mel, 1e-5)).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np
import torch

from clipsonic.config import Config, ConfigError, NonNegative, Positive, PositiveInt
from clipsonic.models.unet import FRAME_BLOCK


@dataclasses.dataclass(frozen=True)
class MelConfig(Config):
    """Mel front end (defaults: the paper's 16 kHz / 64 bands / hop 512)."""

    sample_rate: PositiveInt = 16000
    n_fft: PositiveInt = 2048
    win_length: PositiveInt = 2048
    hop_length: PositiveInt = 512
    n_mels: PositiveInt = 64
    fmin: NonNegative = 0.0
    fmax: Positive = 8000.0
    # One training clip: 65536 samples = 4.096 s = exactly 128 frames at hop 512.
    clip_samples: PositiveInt = 65536
    # Fixed affine map of the log-mel to about [-1, 1] for diffusion: log_min = ln(1e-5) is silence
    # (the floor BigVGAN clamps the mel to), log_max sits just above the loudest full-scale tones we
    # measured (a 0 dBFS 100 Hz sine peaks at ln-mel 3.23 with these settings). Never per-batch statistics.
    log_min: float = math.log(1e-5)
    log_max: float = 3.5

    def __post_init__(self) -> None:
        if self.win_length > self.n_fft:
            raise ValueError(f"win_length {self.win_length} exceeds n_fft {self.n_fft}")
        if self.hop_length > self.n_fft:
            raise ValueError(f"hop_length {self.hop_length} exceeds n_fft {self.n_fft}")
        if (self.n_fft - self.hop_length) % 2:
            raise ValueError("n_fft - hop_length must be even (BigVGAN pads it equally on both sides)")
        if not 0 <= self.fmin < self.fmax <= self.sample_rate / 2:
            raise ValueError(f"need 0 <= fmin < fmax <= sample_rate/2, got fmin={self.fmin}, fmax={self.fmax}, "
                             f"sample_rate={self.sample_rate}")
        if self.clip_samples % (FRAME_BLOCK * self.hop_length):
            raise ValueError(f"clip_samples {self.clip_samples} must be a multiple of {FRAME_BLOCK} frames "
                             f"({FRAME_BLOCK * self.hop_length} samples): the UNet's block (clipsonic.models)")
        if self.log_max <= self.log_min:
            raise ValueError("log_max must be greater than log_min")

    @property
    def clip_frames(self) -> int:
        return self.clip_samples // self.hop_length

    @property
    def clip_seconds(self) -> float:
        return self.clip_samples / self.sample_rate

    def with_clip_seconds(self, seconds: float) -> MelConfig:
        """This config with training clips of ``seconds``, rounded down to whole UNet blocks."""
        block = FRAME_BLOCK * self.hop_length
        if not math.isfinite(seconds) or seconds > 86400:  # int(inf) would overflow; a day is no training clip
            raise ConfigError(f"a clip of {seconds} s: give a finite number of seconds (at most 86400)")
        samples = int(seconds * self.sample_rate) // block * block
        if samples < block:
            raise ConfigError(f"a clip of {seconds} s is shorter than {FRAME_BLOCK} mel frames "
                              f"({block / self.sample_rate:.3f} s)")
        return self.replace(clip_samples=samples)

    def mismatch(self, other: MelConfig, ignore: tuple[str, ...] = ("clip_samples",)) -> list[str]:
        """Fields on which two mel configs differ (the clip length is ignored by default: models and
        vocoders take mels of any length)."""
        return [f"{f.name}: {getattr(self, f.name)} vs {getattr(other, f.name)}" for f in dataclasses.fields(self)
                if getattr(self, f.name) != getattr(other, f.name) and f.name not in ignore]


_F_SP, _MIN_LOG_HZ, _LOGSTEP = 200.0 / 3, 1000.0, np.log(6.4) / 27.0  # Slaney's mel scale constants


def hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale (librosa's default, ``htk=False``): linear below 1 kHz, log above."""
    hz = np.asarray(hz, dtype=np.float64)
    log_part = _MIN_LOG_HZ / _F_SP + np.log(np.maximum(hz, 1e-10) / _MIN_LOG_HZ) / _LOGSTEP
    return np.where(hz >= _MIN_LOG_HZ, log_part, hz / _F_SP)


def mel_to_hz(mel: np.ndarray) -> np.ndarray:
    """Inverse of :func:`hz_to_mel`."""
    mel = np.asarray(mel, dtype=np.float64)
    min_log_mel = _MIN_LOG_HZ / _F_SP
    return np.where(mel >= min_log_mel, _MIN_LOG_HZ * np.exp(_LOGSTEP * (mel - min_log_mel)), _F_SP * mel)


@functools.lru_cache(maxsize=16)
def mel_basis(config: MelConfig) -> torch.Tensor:
    """Slaney mel filterbank ``[n_mels, n_fft // 2 + 1]`` float32 on the CPU: ``librosa.filters.mel`` with its
    defaults (Slaney scale and area norm), as BigVGAN uses it. Written out because importing librosa costs ~3 s
    (scipy.signal, numba) in every process and decoding worker; tests check it against librosa."""
    fft_hz = np.linspace(0.0, config.sample_rate / 2, 1 + config.n_fft // 2)
    edges = mel_to_hz(np.linspace(hz_to_mel(config.fmin), hz_to_mel(config.fmax), config.n_mels + 2))  # [n_mels + 2]
    widths = np.diff(edges)
    ramps = edges[:, None] - fft_hz[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]  # Slaney: constant energy per band
    return torch.from_numpy(weights.astype(np.float32))


def mel_spectrogram(wav: torch.Tensor, config: MelConfig | None = None) -> torch.Tensor:
    """Log-mel: ``[samples]`` → ``[n_mels, frames]``, ``[B, samples]`` → ``[B, n_mels, frames]``; frames =
    samples // hop for multiples of the hop."""
    config = config or MelConfig()
    squeeze = wav.dim() == 1
    wav = wav[None] if squeeze else wav
    if wav.dim() != 2:
        raise ValueError(f"expected a waveform [samples] or [B, samples], got shape {tuple(wav.shape)}")
    pad = (config.n_fft - config.hop_length) // 2
    if wav.shape[-1] <= pad:
        raise ValueError(f"waveform of {wav.shape[-1]} samples is too short for n_fft={config.n_fft}; "
                         f"need more than {pad}")
    x = torch.nn.functional.pad(wav[:, None].float(), (pad, pad), mode="reflect")[:, 0]
    window = torch.hann_window(config.win_length, device=x.device)
    spec = torch.stft(x, config.n_fft, hop_length=config.hop_length, win_length=config.win_length, window=window,
                      center=False, normalized=False, onesided=True, return_complex=True)
    magnitude = torch.sqrt(spec.real.pow(2) + spec.imag.pow(2) + 1e-9)  # [B, n_fft // 2 + 1, frames]
    mel = torch.matmul(mel_basis(config).to(magnitude.device), magnitude)
    logmel = torch.log(torch.clamp(mel, min=1e-5))
    return logmel[0] if squeeze else logmel


def normalize(logmel: torch.Tensor, config: MelConfig | None = None) -> torch.Tensor:
    """Log-mel → diffusion space (about [-1, 1]) by the config's fixed constants."""
    config = config or MelConfig()
    return (logmel - config.log_min) / (config.log_max - config.log_min) * 2.0 - 1.0


def denormalize(x: torch.Tensor, config: MelConfig | None = None) -> torch.Tensor:
    """Diffusion space → log-mel; the exact inverse of :func:`normalize`."""
    config = config or MelConfig()
    return (x + 1.0) / 2.0 * (config.log_max - config.log_min) + config.log_min


def mel_to_magnitude(logmel: torch.Tensor, config: MelConfig, n_iter: int = 50) -> torch.Tensor:
    """Approximate linear magnitude ``[B, n_fft//2+1, frames]`` from a log-mel ``[B, n_mels, frames]``: non-negative
    least squares by multiplicative updates (Lee & Seung), started from the transposed filterbank (the
    pseudo-inverse alone gives negative bins and audible holes)."""
    basis = mel_basis(config).to(logmel.device)  # [M, F]
    gram_t_mel = torch.matmul(basis.T, torch.exp(logmel.float()))  # [B, F, T]
    mag = (gram_t_mel / (basis.sum(0)[:, None] ** 2 + 1e-8)).clamp(min=1e-8)
    for _ in range(n_iter):
        denom = torch.matmul(basis.T, torch.matmul(basis, mag)) + 1e-10
        mag = mag * gram_t_mel / denom
    return mag


def griffin_lim(logmel: torch.Tensor, config: MelConfig | None = None, n_iter: int = 32, momentum: float = 0.99,
                seed: int = 0) -> torch.Tensor:
    """Waveform ``[B, frames * hop]`` from a log-mel by fast Griffin-Lim (Perraudin et al. 2013), with centred
    frames shifted by hop/2 at the end: BigVGAN's frame t is centred at ``t * hop + hop / 2``."""
    config = config or MelConfig()
    squeeze = logmel.dim() == 2
    logmel = logmel[None] if squeeze else logmel
    if logmel.dim() != 3 or logmel.shape[1] != config.n_mels:
        raise ValueError(f"expected a log-mel [B, {config.n_mels}, frames], got {tuple(logmel.shape)}")
    frames = logmel.shape[-1]
    mag = mel_to_magnitude(logmel, config)
    window = torch.hann_window(config.win_length, device=logmel.device)
    kw = dict(n_fft=config.n_fft, hop_length=config.hop_length, win_length=config.win_length, window=window)
    length = (frames - 1) * config.hop_length
    # one starting phase per row, from the same seed: a clip's audio must not depend on its batch
    phases = torch.rand(mag.shape[1:], generator=torch.Generator(device="cpu").manual_seed(seed))
    angles = torch.exp(2j * math.pi * phases).to(mag.device)  # [F, T], broadcast over the batch
    prev = torch.zeros_like(angles)
    for _ in range(n_iter):
        wav = torch.istft(mag * angles, center=True, length=length, **kw)
        rebuilt = torch.stft(wav, center=True, return_complex=True, **kw)
        accel = rebuilt - (momentum / (1 + momentum)) * prev
        angles = accel / accel.abs().clamp(min=1e-16)
        prev = rebuilt
    wav = torch.istft(mag * angles, center=True, length=length, **kw)
    shift = config.hop_length // 2
    wav = torch.nn.functional.pad(wav, (shift, frames * config.hop_length - length - shift))
    return wav[0] if squeeze else wav
