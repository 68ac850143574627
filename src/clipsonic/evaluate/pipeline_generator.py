"""The evaluation's :class:`~clipsonic.evaluate.generator.Generator` on a :class:`CLIPSonicPipeline`.

Every generation goes through the pipeline's one ``__call__``; the reconstruction row through its
vocoder. IQ conditions on the clip's stored middle-frame CLIP embedding (``image_embeds``): the
embedding preprocess computed from the original frame, not a re-encoded jpg.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clipsonic.data.dataset import DatasetInfo
from clipsonic.errors import ClipsonicError
from clipsonic.evaluate.config import EvalConfig
from clipsonic.evaluate.generator import model_fingerprint
from clipsonic.evaluate.testset import EvalClip

log = logging.getLogger(__name__)

IQ_CONDITION = "stored middle-frame CLIP embedding (clip.npy row K // 2)"


class PipelineGenerator:
    def __init__(self, model_dir: str | os.PathLike, config: EvalConfig, pipe: Any = None):
        from clipsonic.pipeline import DEFAULT_SAMPLER, DEFAULT_STEPS, CLIPSonicPipeline

        self.model_dir = Path(model_dir)
        self.pipe = pipe if pipe is not None else CLIPSonicPipeline.from_pretrained(self.model_dir, device=config.device)
        self.steps = config.steps or DEFAULT_STEPS
        self.sampler = config.sampler or DEFAULT_SAMPLER
        from clipsonic.diffusion import SAMPLERS

        if self.sampler not in SAMPLERS:  # refused before any audio is made, not after the reference sets
            raise ClipsonicError(f"unknown sampler {self.sampler!r}; choose one of {', '.join(sorted(SAMPLERS))}")
        if not 1 <= self.steps <= self.pipe.diffusion.num_timesteps:
            raise ClipsonicError(f"--steps must be in 1..{self.pipe.diffusion.num_timesteps}, got {self.steps}")
        self.sample_rate = int(self.pipe.sample_rate)
        self.modes = tuple(self.pipe.modes)
        self.seconds: float | None = None
        self._fingerprint = model_fingerprint(self.model_dir)

    def check_dataset(self, info: DatasetInfo) -> None:
        info.check_compatible(self.pipe.mel, clip_dim=self.pipe.clip.dim, clip_model=self.pipe.clip.fingerprint,
                              what=f"the model {self.model_dir}")
        # generate as long as the real test clips, so FAD compares like with like
        self.seconds = info.mel.clip_samples / info.mel.sample_rate

    def _call(self, mode: str, guidance: float, seeds: Sequence[int], **query: Any) -> list[np.ndarray]:
        out = self.pipe(mode=mode, guidance_scale=float(guidance), num_inference_steps=self.steps,
                        sampler=self.sampler, seed=list(seeds), seconds=self.seconds, **query)
        return [np.asarray(a, dtype=np.float32) for a in out.audios]

    def generate(self, mode: str, clips: Sequence[EvalClip], queries: Sequence[str | None], guidance: float,
                 seeds: Sequence[int]) -> list[np.ndarray]:
        if mode != "iq":
            return self._call(mode, guidance, seeds, text=list(queries))
        return self._call(mode, guidance, seeds, image_embeds=np.stack([c.image_embedding for c in clips]))

    @torch.no_grad()
    def reconstruct(self, logmels: Sequence[np.ndarray]) -> list[np.ndarray]:
        vocoder = self.pipe.vocoder
        batch = torch.from_numpy(np.stack(logmels).astype(np.float32)).to(vocoder.device)  # [B, n_mels, F]
        return [np.asarray(a, dtype=np.float32) for a in vocoder(batch).float().cpu().numpy()]

    def settings(self) -> dict[str, Any]:
        return {"model": self._fingerprint, "steps": self.steps, "sampler": self.sampler, "seconds": self.seconds,
                "vocoder": self._vocoder_name(), "iq_condition": IQ_CONDITION}

    def _vocoder_name(self) -> str:
        return "griffin-lim (fallback)" if self.pipe.vocoder_is_fallback else type(self.pipe.vocoder).__name__

    def describe(self) -> dict[str, Any]:
        return {"path": str(self.model_dir), "fingerprint": self._fingerprint, "modes": list(self.modes),
                "clip": self.pipe.clip.describe(), "vocoder": self._vocoder_name(),
                "iq_condition": IQ_CONDITION, "steps": self.steps, "sampler": self.sampler,
                "training": getattr(self.pipe, "training", {})}
