"""What the evaluation asks of a model, and its implementation on :class:`CLIPSonicPipeline`.

The evaluation needs four things: the query modes a model supports, audio for a batch of clips in
one mode at one guidance scale with one seed per clip, the vocoder's reconstruction of real mels,
and a description of every setting that shapes the audio (to key the caches).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from clipsonic.data.dataset import DatasetInfo
from clipsonic.evaluate.config import EvalConfig
from clipsonic.evaluate.testset import EvalClip


class Generator(Protocol):
    sample_rate: int
    modes: tuple[str, ...]

    def check_dataset(self, info: DatasetInfo) -> None:
        """Raise when the dataset's mel config or CLIP model differs from the model's."""

    def generate(self, mode: str, clips: Sequence[EvalClip], queries: Sequence[str | None], guidance: float,
                 seeds: Sequence[int]) -> list[np.ndarray]:
        """One waveform ``[samples]`` per clip: IQ from ``clip.image_embedding``, text modes from ``queries``."""

    def reconstruct(self, logmels: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The vocoder's waveform for each real log-mel ``[n_mels, frames]``."""

    def settings(self) -> dict[str, Any]:
        """Everything that shapes generated audio besides mode, w and seed (model fingerprint, steps, …)."""

    def describe(self) -> dict[str, Any]:
        """For the report: path, vocoder, supported modes, …"""


def model_fingerprint(model_dir: str | os.PathLike) -> str:
    """SHA-256 (first 16 hex) over ``model_index.json``, every component config and weights file's quick print."""
    from clipsonic.embedders.base import quick_fingerprint

    root = Path(model_dir)
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.suffix in (".json", ".safetensors"):
            h.update(str(path.relative_to(root)).encode())
            h.update(path.read_bytes() if path.suffix == ".json" else quick_fingerprint(path).encode())
    return h.hexdigest()[:16]


def load_generator(model_dir: str | os.PathLike, config: EvalConfig) -> Generator:
    from clipsonic.evaluate.pipeline_generator import PipelineGenerator

    return PipelineGenerator(model_dir, config)
