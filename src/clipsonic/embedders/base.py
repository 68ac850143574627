"""The one interface every audio embedder implements, and the waveform checks they share.

An embedder turns a mono waveform, at any sample rate (resampled to its own), into embedding frames
``[frames, D]`` (VGGish: one per 0.96 s; CLAP: one per clip).
"""

from __future__ import annotations

import abc
import hashlib
import os
from pathlib import Path

import numpy as np
import soxr
import torch
from safetensors.torch import load_file

from clipsonic.errors import ClipsonicError


class AudioEmbedder(abc.ABC):
    """Waveform → embedding frames. Subclasses set the class attributes and implement ``_embed``."""

    #: short name used on the command line and in reports ("vggish", "clap", "mel-stats")
    name: str = ""
    #: the rate the model works at; inputs are resampled to it
    sample_rate: int = 16000
    #: embedding size D
    dim: int = 0
    #: whether its FAD can be compared with published numbers (False for sanity metrics)
    comparable: bool = True
    #: one line for reports: what it is, and what its numbers can be compared with
    description: str = ""
    #: names the embedder *and its weights*: cached embeddings are reused only under the same id
    cache_id: str = ""

    def embed(self, wav: np.ndarray, sample_rate: int) -> np.ndarray:
        """Embedding frames ``[frames, D]`` (float32) of a mono waveform ``[samples]``."""
        x = prepare_waveform(wav, sample_rate, self.sample_rate, what=self.name)
        out = np.asarray(self._embed(x), dtype=np.float32)
        if out.ndim != 2 or out.shape[1] != self.dim:
            raise ClipsonicError(f"{self.name} returned shape {out.shape}, expected [frames, {self.dim}]")
        return out

    @abc.abstractmethod
    def _embed(self, wav: np.ndarray) -> np.ndarray:
        """``wav``: float32 ``[samples]`` at :attr:`sample_rate`, finite. Returns ``[frames, D]``."""


def prepare_waveform(wav: np.ndarray, sample_rate: int, target_rate: int, what: str = "embedder") -> np.ndarray:
    """Mono float32 ``[samples]`` at ``target_rate``; refuses NaN/inf and empty audio with a clear error."""
    x = np.asarray(wav, dtype=np.float32)
    if x.ndim == 2 and 1 in x.shape:
        x = x.reshape(-1)
    if x.ndim != 1:
        raise ClipsonicError(f"{what}: expected mono audio [samples], got shape {x.shape}")
    if x.size == 0:
        raise ClipsonicError(f"{what}: empty audio")
    if not np.all(np.isfinite(x)):
        raise ClipsonicError(f"{what}: audio contains NaN or infinity ({int((~np.isfinite(x)).sum())} samples)")
    if sample_rate != target_rate:
        x = soxr.resample(x, sample_rate, target_rate, quality="HQ").astype(np.float32)
    return x


def quick_fingerprint(path: str | os.PathLike) -> str:
    """First 12 hex digits of SHA-256 over a file's size and its first and last 4 MiB (a cache key only)."""
    path = Path(path)
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as fh:
        h.update(fh.read(4 << 20))
        if size > 8 << 20:
            fh.seek(-(4 << 20), os.SEEK_END)
            h.update(fh.read())
    return h.hexdigest()[:12]


def default_weights_dir() -> Path:
    """Where weights are looked for when no path is given: ``$CLIPSONIC_WEIGHTS`` or ``~/.cache/clipsonic/weights``."""
    env = os.environ.get("CLIPSONIC_WEIGHTS")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "clipsonic" / "weights"


def resolve_weights(path: str | os.PathLike | None, default_name: str, what: str, how_to_get: str) -> Path:
    """``path`` (a file, or a folder holding ``default_name``), else ``default_weights_dir()/default_name``."""
    candidate = Path(path).expanduser() if path is not None else default_weights_dir() / default_name
    if candidate.is_dir():
        candidate = candidate / default_name
    if not candidate.is_file():
        raise ClipsonicError(f"{what} weights not found: {candidate} does not exist. {how_to_get}")
    return candidate


def read_state_dict(path: str | os.PathLike, how_to_get: str = "") -> dict[str, torch.Tensor]:
    """A checkpoint's tensors from ``.safetensors`` or a ``.pt``/``.pth`` read with ``weights_only=True`` (no
    code runs), unwrapped from a ``state_dict``/``model`` entry and DistributedDataParallel's ``module.`` prefix."""
    if str(path).endswith(".safetensors"):
        state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ClipsonicError(f"{path} could not be read as a tensors-only checkpoint ({exc}). {how_to_get}") from None
    for key in ("state_dict", "model"):
        state = state[key] if isinstance(state, dict) and key in state else state
    if not isinstance(state, dict) or not state:
        raise ClipsonicError(f"{path} holds no state dict. {how_to_get}")
    return {k.removeprefix("module."): v for k, v in state.items()}
