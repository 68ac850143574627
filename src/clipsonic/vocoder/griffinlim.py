"""Griffin-Lim as a :class:`~clipsonic.vocoder.base.Vocoder`: no training, always available.

Wraps :func:`clipsonic.audio.griffin_lim` (fast Griffin-Lim with momentum, after a
non-negative least-squares mel inversion) so the pipeline can fall back to it when no trained
BigVGAN exists. Audible but phasey: the paper's numbers use BigVGAN.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from clipsonic.audio import MelConfig, griffin_lim
from clipsonic.config import Config
from clipsonic.vocoder.base import Vocoder


@dataclasses.dataclass(frozen=True)
class GriffinLimConfig(Config):
    """Griffin-Lim settings (32 iterations: the knee of quality vs time on 2 CPU cores)."""

    n_iter: int = 32
    # Perraudin et al. 2013: 0.99 converges in far fewer iterations than plain Griffin-Lim.
    momentum: float = 0.99
    # The initial random phase; fixed so the same mel always gives the same audio.
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_iter < 0:
            raise ValueError(f"n_iter must be >= 0, got {self.n_iter}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")


class GriffinLimVocoder(Vocoder):
    """Mel → waveform by phase reconstruction; ``device`` follows :meth:`to`."""

    type_name = "griffin-lim"

    def __init__(self, mel_config: MelConfig | None = None, config: GriffinLimConfig | None = None) -> None:
        super().__init__(mel_config or MelConfig())
        self.config = config or GriffinLimConfig()
        self._device = torch.device("cpu")

    @property
    def device(self) -> torch.device:
        return self._device

    def to(self, device: str | torch.device) -> GriffinLimVocoder:
        self._device = torch.device(device)
        return self

    def _synthesize(self, logmel: torch.Tensor) -> torch.Tensor:
        c = self.config
        return griffin_lim(logmel, self.mel_config, n_iter=c.n_iter, momentum=c.momentum, seed=c.seed)

    def component_config(self) -> dict[str, Any]:
        return {"griffin_lim": self.config.to_dict()}

    @classmethod
    def from_config_dict(cls, data: dict[str, Any], source: str = "config.json") -> GriffinLimVocoder:
        mel = MelConfig.from_dict(data["mel"], source=f"{source}:mel")
        config = GriffinLimConfig.from_dict(data.get("griffin_lim", {}), source=f"{source}:griffin_lim")
        return cls(mel, config)
