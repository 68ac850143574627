"""PANNs CNN14 (Kong et al. 2020): 2048-d per clip at 32 kHz, the FAD backbone of AudioLDM-style papers.

Module names as the released ``Cnn14_mAP=0.431.pth``. Front end as torchlibrosa (recomputed, not loaded):
centred STFT (n_fft 1024, hop 320, periodic Hann) → power → Slaney mel (64 bands, 50–14000 Hz) →
10·log10(max(mel, 1e-10)). The embedding is ``relu(fc1(pooled))``, the layer before the AudioSet classifier.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from clipsonic.audio import MelConfig, mel_basis
from clipsonic.embedders.base import AudioEmbedder, load_module, pick_device, quick_fingerprint, resolve_weights

SAMPLE_RATE = 32000
N_FFT = 1024
HOP = 320
N_MELS = 64
WEIGHTS_FILE = "Cnn14_mAP=0.431.pth"
HOW_TO_GET = (
    "Download Cnn14_mAP=0.431.pth once (PANNs, Kong et al.; Zenodo record 3987831) and pass it with "
    "--embedder-weights PATH (or put it in $CLIPSONIC_WEIGHTS)."
)
_CHANNELS = (64, 128, 256, 512, 1024, 2048)
# for its Slaney filterbank [64, 513], as torchlibrosa builds it (clip_samples: any the config accepts, unused)
_MEL = MelConfig(sample_rate=SAMPLE_RATE, n_fft=N_FFT, win_length=N_FFT, hop_length=HOP, n_mels=N_MELS,
                 fmin=50.0, fmax=14000.0, clip_samples=8 * HOP)


def log_mel(wav: torch.Tensor) -> torch.Tensor:
    """``[B, samples]`` 32 kHz → ``[B, frames, 64]`` dB log-mel, ``frames = samples // 320 + 1``."""
    window = torch.hann_window(N_FFT, periodic=True, dtype=wav.dtype, device=wav.device)
    spec = torch.stft(wav, N_FFT, HOP, N_FFT, window, center=True, pad_mode="reflect", return_complex=True)
    power = spec.real ** 2 + spec.imag ** 2  # [B, 513, frames]
    mel = mel_basis(_MEL).to(wav) @ power  # [64, 513] @ [B, 513, frames]
    return (10.0 * torch.log10(torch.clamp(mel, min=1e-10))).transpose(1, 2)


class ConvBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.bn2 = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor, pool: int) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return F.avg_pool2d(x, pool) if pool > 1 else x


class Cnn14(nn.Module):
    """``[B, frames, 64]`` log-mel → ``[B, 2048]`` embedding (the AudioSet head ``fc_audioset`` is unused)."""

    def __init__(self, channels: tuple[int, ...] = _CHANNELS):
        super().__init__()
        self.bn0 = nn.BatchNorm2d(N_MELS)
        widths = (1, *channels)  # other widths only for tests: the released weights are _CHANNELS
        for i in range(6):
            self.add_module(f"conv_block{i + 1}", ConvBlock(widths[i], widths[i + 1]))
        self.fc1 = nn.Linear(widths[-1], widths[-1])
        self.fc_audioset = nn.Linear(widths[-1], 527)

    def forward(self, logmel: torch.Tensor) -> torch.Tensor:
        x = self.bn0(logmel[:, None].transpose(1, 3)).transpose(1, 3)  # BatchNorm per mel band: [B, 1, T, 64]
        for i in range(6):
            x = getattr(self, f"conv_block{i + 1}")(x, pool=2 if i < 5 else 1)  # → [B, 2048, T/32, 64/32]
        x = x.mean(dim=3)  # over frequency: [B, 2048, T']
        x = F.max_pool1d(x, 3, 1, 1) + F.avg_pool1d(x, 3, 1, 1)
        x = x.max(dim=2).values + x.mean(dim=2)  # [B, 2048]
        return F.relu(self.fc1(x))


class PannsEmbedder(AudioEmbedder):
    name = "panns"
    sample_rate = SAMPLE_RATE
    dim = 2048
    description = "PANNs CNN14 (2048-d per clip, 32 kHz; the FAD backbone of AudioLDM-style evaluations)"

    def __init__(self, weights: str | os.PathLike | None = None, device: str | torch.device | None = None):
        path = resolve_weights(weights, WEIGHTS_FILE, "PANNs CNN14", HOW_TO_GET)
        self.device = pick_device(device)
        self.model = load_module(Cnn14, path, "PANNs CNN14", HOW_TO_GET, self.device)
        self.cache_id = f"panns-cnn14-{quick_fingerprint(path)}"

    @torch.no_grad()
    def _embed(self, wav: np.ndarray) -> np.ndarray:
        wav = np.pad(wav, (0, max(32 * HOP - len(wav), 0)))  # five 2×2 poolings need at least 32 frames
        x = torch.from_numpy(wav)[None].to(self.device)
        return self.model(log_mel(x)).cpu().numpy()
