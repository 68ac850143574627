"""The vocoder interface: log-mel ``[B, n_mels, frames]`` → waveform ``[B, frames * hop]``.

Every vocoder carries the :class:`~clipsonic.audio.MelConfig` it was built for and refuses mels
from another front end: a BigVGAN trained on hop 512 / 64 bands turns other mels into noise
without any error, so the check is explicit (:meth:`Vocoder.check_compatible`).

A saved vocoder is a directory: ``config.json`` (``"type"``, ``"mel"``, the component's
hyper-parameters) plus ``*.safetensors`` weights when it has any. It loads without executing
code from the directory (no pickles), which lets a pipeline ship it as its ``vocoder/`` component.
"""

from __future__ import annotations

import abc
import os
from pathlib import Path
from typing import Any

import torch

from clipsonic import __version__
from clipsonic.audio import MelConfig
from clipsonic.errors import ClipsonicError
from clipsonic.files import write_json_atomic

CONFIG_NAME = "config.json"

# The mel fields a vocoder depends on. log_min / log_max only scale the diffusion space and
# clip_samples is the training clip length: neither changes what a log-mel means to a vocoder.
VOCODER_MEL_FIELDS = ("sample_rate", "n_fft", "win_length", "hop_length", "n_mels", "fmin", "fmax")


class VocoderError(ClipsonicError):
    """A vocoder cannot be built, loaded, trained or used on the given input."""


def mel_mismatch(ours: MelConfig, theirs: MelConfig) -> list[str]:
    """The vocoder-relevant fields on which two mel configs differ (``"name: a vs b"``)."""
    return [d for d in ours.mismatch(theirs) if d.split(":", 1)[0] in VOCODER_MEL_FIELDS]


class Vocoder(abc.ABC):
    """Turns log-mels into waveforms. Subclasses implement :meth:`_synthesize` and the config."""

    type_name: str = ""

    def __init__(self, mel_config: MelConfig) -> None:
        self.mel_config = mel_config

    @property
    def sample_rate(self) -> int:
        return self.mel_config.sample_rate

    @property
    def hop_length(self) -> int:
        return self.mel_config.hop_length

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def to(self, device: str | torch.device) -> Vocoder:
        """Move to ``device``; returns ``self`` (like ``nn.Module.to``)."""
        return self

    def check_compatible(self, mel_config: MelConfig, what: str = "the pipeline") -> None:
        """Raise :class:`VocoderError` naming both configs when ``mel_config`` is not ours."""
        diffs = mel_mismatch(self.mel_config, mel_config)
        if diffs:
            raise VocoderError(
                f"this {self.type_name} vocoder was built for a different mel config than {what} "
                f"uses ({'; '.join(diffs)}; vocoder vs {what}); train a vocoder on {what}'s mel "
                "config (clipsonic train-vocoder) or use --griffin-lim"
            )

    def __call__(self, logmel: torch.Tensor) -> torch.Tensor:
        """Log-mel ``[B, n_mels, frames]`` (or ``[n_mels, frames]``) → float32 waveform
        ``[B, frames * hop]`` (or ``[frames * hop]``) on the input's device."""
        squeeze = logmel.dim() == 2
        batch = logmel[None] if squeeze else logmel
        if batch.dim() != 3 or batch.shape[1] != self.mel_config.n_mels:
            raise VocoderError(
                f"expected a log-mel [B, {self.mel_config.n_mels}, frames], got shape {tuple(logmel.shape)}"
            )
        if not torch.isfinite(batch).all():
            raise VocoderError("the log-mel contains NaN or infinite values; check the model that produced it")
        with torch.inference_mode():
            wav = self._synthesize(batch.to(self.device, torch.float32)).float()
        expected = batch.shape[-1] * self.hop_length
        if wav.shape != (batch.shape[0], expected):
            raise VocoderError(f"{self.type_name} produced {tuple(wav.shape)}, expected {(batch.shape[0], expected)}")
        wav = wav.to(logmel.device)
        return wav[0] if squeeze else wav

    @abc.abstractmethod
    def _synthesize(self, logmel: torch.Tensor) -> torch.Tensor:
        """float32 log-mel ``[B, n_mels, frames]`` on :attr:`device` → waveform ``[B, frames * hop]``."""

    @abc.abstractmethod
    def component_config(self) -> dict[str, Any]:
        """The hyper-parameters that rebuild this vocoder (written beside ``type`` and ``mel``)."""

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json`` (and weights, if any) into ``directory``; returns it."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._save_weights(directory)
        write_json_atomic(directory / CONFIG_NAME, self.to_config_dict())
        return directory

    def to_config_dict(self) -> dict[str, Any]:
        return {
            "type": self.type_name,
            "mel": self.mel_config.to_dict(),
            **self.component_config(),
            "clipsonic_version": __version__,
        }

    def _save_weights(self, directory: Path) -> None:
        """Write ``*.safetensors`` into ``directory``; vocoders without weights write nothing."""
        return None

    def __repr__(self) -> str:
        m = self.mel_config
        return f"{type(self).__name__}({m.sample_rate} Hz, {m.n_mels} mels, hop {m.hop_length})"
