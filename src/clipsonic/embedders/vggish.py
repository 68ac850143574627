"""VGGish (Hershey et al. 2017), the classic FAD backbone: 128-d per 0.96 s of 16 kHz audio (and mel-stats,
a weight-free sanity embedder on its input features).

Input features exactly as the reference (tensorflow/models research/audioset/vggish): 16 kHz mono →
frames of 25 ms (400 samples) every 10 ms (160), no padding, periodic Hann window, |rfft| with 512
points → 64 mel bands on HTK's mel scale (1127·ln(1 + f/700)) between 125 and 7500 Hz with triangles
linear in *mel*, the DC bin excluded → ln(mel + 0.01) → non-overlapping patches of 96 frames (0.96 s):
``[num_patches, 96, 64]``. The reference reads 16-bit PCM as ``int16 / 32768``: floats in [-1, 1] as here.

The network (:class:`VGGish`) loads a local safetensors file with torchvggish's keys. Its embedding has no
final ReLU, as in the TF definition and Google's FAD code (torchvggish's ``final_relu=True``); no PCA.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from clipsonic.embedders.base import AudioEmbedder, load_module, pick_device, quick_fingerprint, resolve_weights
from clipsonic.errors import ClipsonicError

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
WINDOW_SAMPLES = 400  # round(16000 · 0.025)
HOP_SAMPLES = 160  # round(16000 · 0.010)
FFT_LENGTH = 512  # next power of two ≥ the window
NUM_BANDS = 64
PATCH_FRAMES = 96  # round(0.96 s · 100 frames/s), also the hop between patches
#: shortest input giving one patch: 95 hops + one window
MIN_SAMPLES = (PATCH_FRAMES - 1) * HOP_SAMPLES + WINDOW_SAMPLES


def hertz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    """HTK mel scale: ``1127 · ln(1 + f / 700)``."""
    return 1127.0 * np.log(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def frame(data: np.ndarray, window: int, hop: int) -> np.ndarray:
    """Non-padded frames along axis 0: ``[N, ...]`` → ``[1 + (N − window) // hop, window, ...]``."""
    if data.shape[0] < window:
        return np.zeros((0, window) + data.shape[1:], dtype=data.dtype)
    return np.moveaxis(np.lib.stride_tricks.sliding_window_view(data, window, axis=0)[::hop], -1, 1)


def stft_magnitude(wav: np.ndarray) -> np.ndarray:
    """``[frames, 257]`` magnitudes of the 512-point rfft of Hann-windowed 400-sample frames."""
    frames = frame(np.asarray(wav, dtype=np.float64), WINDOW_SAMPLES, HOP_SAMPLES)
    # the periodic Hann window 0.5 − 0.5 cos(2π n / N), written out: scipy.signal costs 1.5 s of import
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(WINDOW_SAMPLES) / WINDOW_SAMPLES)
    return np.abs(np.fft.rfft(frames * window, FFT_LENGTH))


@functools.lru_cache(maxsize=1)
def mel_matrix() -> np.ndarray:
    """``[257, 64]`` HTK-style triangular filters, linear in mel, DC bin zeroed (the reference's)."""
    bins_mel = hertz_to_mel(np.linspace(0.0, SAMPLE_RATE / 2, FFT_LENGTH // 2 + 1))
    edges = np.linspace(hertz_to_mel(125.0), hertz_to_mel(7500.0), NUM_BANDS + 2)  # 125–7500 Hz
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]  # [64] each
    rising = (bins_mel[:, None] - lower) / (centre - lower)
    falling = (upper - bins_mel[:, None]) / (upper - centre)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights[0, :] = 0.0  # HTK excludes the DC bin
    weights.setflags(write=False)
    return weights


def log_mel(wav: np.ndarray) -> np.ndarray:
    """``[frames, 64]`` ln(mel + 0.01) of 16 kHz audio, ``frames = 1 + (samples − 400) // 160``."""
    return np.log(stft_magnitude(wav) @ mel_matrix() + 0.01)


def waveform_to_patches(wav: np.ndarray) -> np.ndarray:
    """``[num_patches, 96, 64]`` log-mel patches of 16 kHz audio (``[0, 96, 64]`` when shorter than 0.975 s)."""
    return frame(log_mel(wav), PATCH_FRAMES, PATCH_FRAMES)


WEIGHTS_FILE = "vggish.safetensors"
HOW_TO_GET = (
    "Download torchvggish's release file vggish-10086976.pth (GitHub: harritaylor/torchvggish, "
    "Releases) and convert it once: `python -m clipsonic.embedders.vggish vggish-10086976.pth "
    f"{WEIGHTS_FILE}`; then pass --embedder-weights {WEIGHTS_FILE} (or put it in $CLIPSONIC_WEIGHTS)."
)
# Channels of each 3×3 convolution, "M" a 2×2 max-pool (the VGG recipe; gives torchvggish's indices).
_FEATURES = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M")
_FCS = ((512 * 6 * 4, 4096), (4096, 4096), (4096, 128))  # (in, out) of each fully connected layer


class VGGish(nn.Module):
    """``[B, 1, 96, 64]`` log-mel patches → ``[B, 128]`` embeddings (module names as torchvggish)."""

    def __init__(self, final_relu: bool = False):
        super().__init__()
        layers: list[nn.Module] = []
        channels = 1
        for spec in _FEATURES:
            if spec == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(channels, int(spec), 3, padding=1), nn.ReLU(inplace=True)]
                channels = int(spec)
        self.features = nn.Sequential(*layers)
        fcs = [m for n_in, n_out in _FCS for m in (nn.Linear(n_in, n_out), nn.ReLU(inplace=True))]
        self.embeddings = nn.Sequential(*(fcs if final_relu else fcs[:-1]))

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        x = self.features(patches)  # [B, 512, 6, 4]
        x = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)  # NHWC flatten, as the TF weights expect
        return self.embeddings(x)


def pad_to_one_patch(wav: np.ndarray, what: str) -> np.ndarray:
    """Zero-pad audio shorter than one 0.975-s patch (warned), so short clips still embed."""
    if len(wav) >= MIN_SAMPLES:
        return wav
    log.warning("%s: %.3f s of audio is shorter than one 0.96-s patch; zero-padding it", what,
                len(wav) / SAMPLE_RATE)
    return np.pad(wav, (0, MIN_SAMPLES - len(wav)))


class VGGishEmbedder(AudioEmbedder):
    name = "vggish"
    sample_rate = SAMPLE_RATE
    dim = 128
    description = "VGGish (128-d per 0.96 s, 16 kHz; the classic FAD backbone, as in the paper's Table 1)"

    def __init__(self, weights: str | os.PathLike | None = None, device: str | torch.device | None = None):
        path = resolve_weights(weights, WEIGHTS_FILE, "VGGish", HOW_TO_GET)
        self.device = pick_device(device)
        self.model = load_module(VGGish, path, "VGGish", HOW_TO_GET, self.device)
        self.cache_id = f"vggish-{quick_fingerprint(path)}"

    @torch.no_grad()
    def _embed(self, wav: np.ndarray) -> np.ndarray:
        patches = waveform_to_patches(pad_to_one_patch(wav, self.name))  # [N, 96, 64]
        x = torch.from_numpy(patches.astype(np.float32))[:, None]  # [N, 1, 96, 64]
        out = [self.model(x[i:i + 64].to(self.device)).cpu() for i in range(0, len(x), 64)]  # 64 patches a batch
        return torch.cat(out).numpy()


class MelStatsEmbedder(AudioEmbedder):
    """Weight-free, for plumbing checks: each band's mean and std over a 0.96-s patch of VGGish's log-mel."""

    name = "mel-stats"
    sample_rate = SAMPLE_RATE
    dim = 2 * NUM_BANDS
    comparable = False
    cache_id = "mel-stats-v1"
    description = (
        "mel-stats (weight-free: per-band mean and std of a 0.96-s log-mel patch). A plumbing/sanity "
        "metric: its FAD is NOT comparable with published FADs (use --embedder vggish or clap for those)")

    def __init__(self, weights: None = None, device: str | None = None) -> None:
        if weights is not None:
            raise ClipsonicError("mel-stats needs no weights; drop --embedder-weights")

    def _embed(self, wav: np.ndarray) -> np.ndarray:
        patches = waveform_to_patches(pad_to_one_patch(wav, self.name))  # [N, 96, 64]
        return np.concatenate([patches.mean(axis=1), patches.std(axis=1)], axis=1)  # [N, 128]


def convert_torchvggish(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Convert torchvggish's ``vggish-10086976.pth`` (a plain state dict; tensors only, no code runs) to safetensors."""
    model = load_module(VGGish, src, "VGGish", HOW_TO_GET)
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(dst))
    return dst


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m clipsonic.embedders.vggish SRC.pth DST.safetensors", file=sys.stderr)
        return 2
    try:
        out = convert_torchvggish(args[0], args[1])
    except (ClipsonicError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
