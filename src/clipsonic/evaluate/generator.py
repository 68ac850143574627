"""The model under evaluation: a :class:`CLIPSonicPipeline` run through its one ``__call__``. IQ conditions on
the stored middle-frame CLIP embedding (what preprocess computed, not a re-encoded jpg), and a film pipeline
(``seq_cond="film"``) on a dataset with frame sequences also on the clip's stored sequence (``seq.npy``), so its IQ
is the time-aligned query; the reconstruction row is the pipeline's vocoder on the real mels."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clipsonic.data.dataset import DatasetInfo
from clipsonic.diffusion import SAMPLERS
from clipsonic.errors import ClipsonicError
from clipsonic.evaluate.config import EvalConfig
from clipsonic.evaluate.testset import EvalClip
from clipsonic.export import model_fingerprint
from clipsonic.pipeline import CLIPSonicPipeline

IQ_CONDITION = "stored middle-frame CLIP embedding (clip.npy row K // 2)"
IQ_SEQUENCE = IQ_CONDITION + " and the stored frame sequence (seq.npy), aligned to the mel"


class PipelineGenerator:
    """What the evaluation asks of a model: its modes, audio per (mode, w, seeds), the vocoder's
    reconstruction of real mels, and every setting that shapes the audio (to key the caches)."""

    def __init__(self, model_dir: str | os.PathLike, config: EvalConfig):
        self.model_dir = Path(model_dir)
        self.pipe = CLIPSonicPipeline.from_pretrained(self.model_dir, device=config.device)
        defaults = self.pipe.sampling()  # a distilled pipeline's differ
        self.steps = config.steps or defaults["num_inference_steps"]
        self.sampler = config.sampler or defaults["sampler"]
        if self.sampler not in SAMPLERS:  # refused before any audio is made, not after the reference sets
            raise ClipsonicError(f"unknown sampler {self.sampler!r}; choose one of {', '.join(sorted(SAMPLERS))}")
        if not 1 <= self.steps <= self.pipe.diffusion.num_timesteps:
            raise ClipsonicError(f"--steps must be in 1..{self.pipe.diffusion.num_timesteps}, got {self.steps}")
        self.long = config.long
        self.sample_rate = int(self.pipe.sample_rate)
        self.modes = tuple(self.pipe.modes)
        self.seconds: float | None = None
        self.iq_condition = IQ_CONDITION  # check_dataset: IQ_SEQUENCE for a film pipeline on a dataset with sequences
        # what shapes the audio (export.model_fingerprint) and the CLIP the queries go through
        both = f"{model_fingerprint(self.model_dir)}/{self.pipe.clip.fingerprint}"
        self.fingerprint = hashlib.sha256(both.encode()).hexdigest()[:16]
        self.vocoder = "griffin-lim (fallback)" if self.pipe.vocoder_is_fallback else type(self.pipe.vocoder).__name__

    def check_dataset(self, info: DatasetInfo) -> None:
        """Refuse another mel config or CLIP; generate as long as the dataset's clips (FAD compares like with like)."""
        info.check_compatible(self.pipe.mel, clip_dim=self.pipe.clip.dim, clip_model=self.pipe.clip.fingerprint,
                              what=f"the model {self.model_dir}")
        self.seconds = info.mel.clip_samples / info.mel.sample_rate
        follows = self.pipe.unet.config.follows_frames and info.frame_rate is not None
        if follows and info.frame_rate != self.pipe.training.get("frame_rate"):  # the stored frames would be misplaced
            raise ClipsonicError(f"{info.root} holds frame sequences at {info.frame_rate:g} fps but the model "
                                 f"{self.model_dir} follows frames at {self.pipe.training.get('frame_rate')} fps; "
                                 "evaluate on a dataset preprocessed with that --frame-rate")
        self.iq_condition = IQ_SEQUENCE if follows else IQ_CONDITION  # in the cache key: sequence IQ sets are their own

    def generate(self, mode: str, clips: Sequence[EvalClip], queries: Sequence[str | None], guidance: float,
                 seeds: Sequence[int]) -> list[np.ndarray]:
        """One waveform ``[samples]`` per clip: IQ from ``clip.image_embedding`` (and ``clip.sequence`` when
        :attr:`iq_condition` says so), text modes from ``queries``."""
        query = ({"image_embeds": np.stack([c.image_embedding for c in clips])} if mode == "iq"
                 else {"text": list(queries)})
        if mode == "iq" and self.iq_condition == IQ_SEQUENCE:
            query["sequence_embeds"] = np.stack([c.sequence for c in clips])  # [B, N, D]
        out = self.pipe(mode=mode, guidance_scale=float(guidance), num_inference_steps=self.steps,
                        sampler=self.sampler, seed=list(seeds), seconds=self.seconds, long=self.long, **query)
        return [np.asarray(a, dtype=np.float32) for a in out.audios]

    @torch.no_grad()
    def reconstruct(self, logmels: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The vocoder's waveform for each real log-mel ``[n_mels, frames]``."""
        vocoder = self.pipe.vocoder
        batch = torch.from_numpy(np.stack(logmels).astype(np.float32)).to(vocoder.device)  # [B, n_mels, F]
        return [np.asarray(a, dtype=np.float32) for a in vocoder(batch).float().cpu().numpy()]

    def settings(self) -> dict[str, Any]:
        """Everything that shapes generated audio besides mode, w and seed."""
        return {"model": self.fingerprint, "steps": self.steps, "sampler": self.sampler, "seconds": self.seconds,
                "vocoder": self.vocoder, "iq_condition": self.iq_condition,
                **({"long": self.long} if self.long else {})}  # only when set: earlier evaluations' caches stay valid

    def describe(self) -> dict[str, Any]:
        """For the report."""
        return {"path": str(self.model_dir), "fingerprint": self.fingerprint, "modes": list(self.modes),
                "clip": self.pipe.clip.describe(), "vocoder": self.vocoder, "iq_condition": self.iq_condition,
                "steps": self.steps, "sampler": self.sampler, "long": self.long, "training": self.pipe.training}
