"""VGGish (Hershey et al. 2017), the classic FAD backbone: 128-d per 0.96 s of 16 kHz audio.

Defined here; loads a local safetensors file with torchvggish's keys (``features.N.*``, ``embeddings.N.*``):

    features:   conv64 · pool · conv128 · pool · conv256 · conv256 · pool · conv512 · conv512 · pool
                (3×3 convolutions, stride 1, "same" padding, ReLU; 2×2 max-pools)  [B, 1, 96, 64] → [B, 512, 6, 4]
    flatten in TensorFlow's NHWC order (the weights were trained in TF)          → [B, 12288]
    embeddings: fc 4096 · ReLU · fc 4096 · ReLU · fc 128                          → [B, 128]

The embedding has no final ReLU, as in the TF definition and Google's FAD code (torchvggish adds one:
``final_relu=True``); no AudioSet PCA/quantisation. Weights: see :data:`HOW_TO_GET`.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from clipsonic.embedders import vggish_input
from clipsonic.embedders.base import (
    AudioEmbedder,
    quick_fingerprint,
    read_state_dict,
    resolve_weights,
)
from clipsonic.errors import ClipsonicError

log = logging.getLogger(__name__)

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
        fcs: list[nn.Module] = []
        for n_in, n_out in _FCS:
            fcs += [nn.Linear(n_in, n_out), nn.ReLU(inplace=True)]
        self.embeddings = nn.Sequential(*(fcs if final_relu else fcs[:-1]))

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        x = self.features(patches)  # [B, 512, 6, 4]
        x = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)  # NHWC flatten, as the TF weights expect
        return self.embeddings(x)


def load_vggish_state(path: Path) -> dict[str, torch.Tensor]:
    """Read and check a converted VGGish state dict (safetensors); names the missing keys."""
    try:
        state = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise ClipsonicError(f"{path} is not a readable safetensors file ({exc}). {HOW_TO_GET}") from None
    expected = _shapes()
    missing = sorted(set(expected) - set(state))
    if missing:
        raise ClipsonicError(f"{path} is not a VGGish state dict: missing {missing[:4]}{'…' if len(missing) > 4 else ''}. {HOW_TO_GET}")
    for key, shape in expected.items():
        if tuple(state[key].shape) != shape:
            raise ClipsonicError(f"{path}: {key} has shape {tuple(state[key].shape)}, VGGish needs {shape}")
    return {k: state[k].float() for k in expected}


def _shapes() -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes, from a weightless (meta-device) instance."""
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in VGGish().state_dict().items()}


def pad_to_one_patch(wav: np.ndarray, what: str) -> np.ndarray:
    """Zero-pad audio shorter than one 0.975-s patch (warned), so short clips still embed."""
    if len(wav) >= vggish_input.MIN_SAMPLES:
        return wav
    log.warning("%s: %.3f s of audio is shorter than one 0.96-s patch; zero-padding it", what,
                len(wav) / vggish_input.SAMPLE_RATE)
    return np.pad(wav, (0, vggish_input.MIN_SAMPLES - len(wav)))


class VGGishEmbedder(AudioEmbedder):
    name = "vggish"
    sample_rate = vggish_input.SAMPLE_RATE
    dim = 128
    description = "VGGish (128-d per 0.96 s, 16 kHz; the classic FAD backbone, as in the paper's Table 1)"

    def __init__(self, weights: str | os.PathLike | None = None, device: str | torch.device | None = None,
                 final_relu: bool = False, batch_size: int = 64):
        path = resolve_weights(weights, WEIGHTS_FILE, "VGGish", HOW_TO_GET)
        self.weights_path = path
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        state = load_vggish_state(path)
        with torch.device("meta"):  # no random init of 72M parameters: the weights replace them
            self.model = VGGish(final_relu=final_relu)
        self.model.load_state_dict(state, assign=True)
        self.model.eval().to(self.device)
        self.batch_size = batch_size
        self.cache_id = f"vggish{'-relu' if final_relu else ''}-{quick_fingerprint(path)}"

    @torch.no_grad()
    def _embed(self, wav: np.ndarray) -> np.ndarray:
        patches = vggish_input.waveform_to_patches(pad_to_one_patch(wav, self.name))  # [N, 96, 64]
        x = torch.from_numpy(patches.astype(np.float32))[:, None]  # [N, 1, 96, 64]
        out = [self.model(x[i:i + self.batch_size].to(self.device)).cpu() for i in range(0, len(x), self.batch_size)]
        return torch.cat(out).numpy()


def convert_torchvggish(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Convert torchvggish's ``vggish-10086976.pth`` (a plain state dict; tensors only, no code runs) to safetensors."""
    state = read_state_dict(src, HOW_TO_GET)
    keys = set(_shapes())
    missing = sorted(keys - set(state))
    if missing:
        raise ClipsonicError(f"{src} does not hold VGGish weights (missing {missing[:4]})")
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: state[k].contiguous().float() for k in sorted(keys)}, str(dst))
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
