"""The one interface every audio embedder implements (any-rate mono waveform → embedding frames
``[frames, D]``), and the waveform and weight loading they share."""

from __future__ import annotations

import abc
import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soxr
import torch
from safetensors.torch import load_file
from torch import nn

from clipsonic.errors import ClipsonicError
from clipsonic.files import read_safetensors_header


class AudioEmbedder(abc.ABC):
    """Waveform → embedding frames. Subclasses set the class attributes and implement ``_embed``."""

    name: str = ""  # on the command line and in reports ("vggish", "clap", "mel-stats")
    sample_rate: int = 16000  # the model's rate; inputs are resampled to it
    dim: int = 0  # embedding size D
    comparable: bool = True  # whether its FAD compares with published numbers (False for sanity metrics)
    description: str = ""  # one line for reports: what it is, what its numbers compare with
    cache_id: str = ""  # names the embedder *and its weights*: cached embeddings are reused only under the same id

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

    def describe(self) -> dict:
        """For the report."""
        return {"name": self.name, "cache_id": self.cache_id, "comparable": self.comparable,
                "description": self.description, "sample_rate": self.sample_rate, "dim": self.dim}


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
    """First 12 hex digits of SHA-256 over a file's size and its first and last 4 MiB (a cache key only).

    A safetensors header is hashed as key-sorted JSON (:func:`clipsonic.files.read_safetensors_header`).
    """
    path = Path(path)
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as fh:
        if path.suffix == ".safetensors":
            h.update(read_safetensors_header(fh, path))
        start = fh.tell()
        h.update(fh.read(4 << 20))
        if size - start > 8 << 20:
            fh.seek(-(4 << 20), os.SEEK_END)
            h.update(fh.read())
    return h.hexdigest()[:12]


def resolve_weights(path: str | os.PathLike | None, default_name: str, what: str, how_to_get: str) -> Path:
    """``path`` (a file, or a folder holding ``default_name``), else ``default_name`` in ``$CLIPSONIC_WEIGHTS``
    or ``$XDG_CACHE_HOME/clipsonic/weights`` (``~/.cache`` without it)."""
    if path is None:
        cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        path = os.environ.get("CLIPSONIC_WEIGHTS") or os.path.join(cache, "clipsonic", "weights")
    candidate = Path(path).expanduser()
    if candidate.is_dir():
        candidate = candidate / default_name
    if not candidate.is_file():
        raise ClipsonicError(f"{what} weights not found: {candidate} does not exist. {how_to_get}")
    return candidate


def pick_device(device: str | torch.device | None) -> torch.device:
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def read_state_dict(path: str | os.PathLike, how_to_get: str = "") -> dict[str, torch.Tensor]:
    """A checkpoint's tensors from ``.safetensors`` or a ``.pt``/``.pth`` read with ``weights_only=True`` (no
    code runs), unwrapped from a ``state_dict``/``model`` entry and DistributedDataParallel's ``module.`` prefix."""
    try:
        safetensors = str(path).endswith(".safetensors")
        state = load_file(str(path)) if safetensors else torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch and safetensors raise their own error types for corrupt files
        raise ClipsonicError(f"{path} could not be read as a tensors-only checkpoint ({exc}). {how_to_get}") from None
    for key in ("state_dict", "model"):
        state = state[key] if isinstance(state, dict) and key in state else state
    if not isinstance(state, dict) or not state:
        raise ClipsonicError(f"{path} holds no state dict. {how_to_get}")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_module(make: Callable[[], nn.Module], path: str | os.PathLike, what: str, how_to_get: str,
                device: torch.device | str = "cpu") -> nn.Module:
    """``make()``, built without random init (meta device), given the checkpoint's tensors (floats as
    float32), in eval mode on ``device``; a missing or misshapen tensor is one error naming the file."""
    state = read_state_dict(path, how_to_get)
    with torch.device("meta"):
        model = make()
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    if missing:
        raise ClipsonicError(f"{path} is not a {what} checkpoint: {len(missing)} tensors missing, e.g. "
                             f"{missing[:3]}. {how_to_get}")
    try:
        model.load_state_dict({k: state[k].float() if state[k].is_floating_point() else state[k] for k in own},
                              assign=True)
    except RuntimeError as exc:  # size mismatch
        raise ClipsonicError(f"{path} does not fit {what}: {exc}. {how_to_get}") from None
    return model.eval().to(device)
