"""Video queries on a pipeline that follows frames (``seq_cond`` "film" or "xattn"): the frame-aligned condition
sequence, and the wrapper that hands it to the mel model.

The model learned on frames taken at the dataset's rate R (``preprocess --frame-rate R``, recorded by the export as
``training.frame_rate``), so the video is embedded at that rate over the generated span: frame j at time (j + 0.5)/R.
Each mel frame then takes the video frame nearest its centre, giving one row per mel frame ``[F, D]``: the window
wrapper (clipsonic.diffusion.windows) cuts that exactly as it cuts the mel, and the UNet's own resampling of a
sequence onto its levels sees the same times it was trained on.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch
from torch import nn

from clipsonic.audio import MelConfig
from clipsonic.errors import ClipsonicError
from clipsonic.media import load_frames, probe


def training_frame_rate(training: dict, long: str | None) -> float:
    """The frame rate a film pipeline was trained at (its ``training.frame_rate``); one line naming the fix if it has
    none, or if ``long`` asks for continuation (its windows are sampled one by one, without their frames)."""
    rate = training.get("frame_rate")
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 < rate < math.inf:
        raise ClipsonicError(f"this pipeline follows video frames (seq_cond 'film' or 'xattn') but its model_index.json has no "
                             f"training.frame_rate (got {rate!r}); re-export it from its run (clipsonic export RUN) "
                             "or set it to the dataset's --frame-rate")
    if long == "continuation":
        raise ClipsonicError("long='continuation' does not follow the video's frames; use long='windows' (default)")
    return float(rate)


def video_sequence(path: str | os.PathLike, encoder, frame_rate: float, frames: int, mel: MelConfig) -> torch.Tensor:
    """L2-normalised CLIP embeddings ``[frames, D]`` of ``path``, one row per mel frame: the video frame (taken at
    ``frame_rate``) nearest the mel frame's centre. Past the video's end the last frame holds."""
    frame_seconds = mel.hop_length / mel.sample_rate
    duration = float(probe(path).duration)
    span = min(duration, frames * frame_seconds)
    n = max(1, math.ceil(span * frame_rate))
    last = span - min(span, 1 / frame_rate) / 2  # the middle of the last frame's part that the video still shows
    times = [min((j + 0.5) / frame_rate, last) for j in range(n)]
    emb = torch.nn.functional.normalize(encoder.encode_images(load_frames(path, times)).float(), dim=-1)  # [n, D]
    return emb[_covering(frames, frame_rate, n, mel)]


class SequenceConditioned(nn.Module):
    """The mel model with a frame-aligned ``cond_seq`` ``[B, F, D]`` for its B rows. Guidance runs ``[cond; null]``
    as one batch of 2B (clipsonic.diffusion.guidance), so a batch k·B long gets the rows k times in that order;
    where ``drop_cond`` is set the model replaces the sequence by its null condition anyway."""

    def __init__(self, model: nn.Module, cond_seq: torch.Tensor) -> None:
        super().__init__()
        self.model, self.cond_seq = model, cond_seq

    def forward(self, x, t, cond, drop_cond=None):
        seq = self.cond_seq.to(device=x.device).repeat(x.shape[0] // len(self.cond_seq), 1, 1)  # [k·B, F, D]
        return self.model(x, t, cond, drop_cond, cond_seq=seq)


def stored_sequence(seq: torch.Tensor | np.ndarray, queries: int, frames: int, frame_rate: float,
                    mel: MelConfig) -> torch.Tensor:
    """Stored frame embeddings ``[Q, N, D]`` taken at ``frame_rate`` (frame j covering ``[j/R, (j+1)/R)``, as a
    dataset's seq.npy made at that rate) as L2-normalised rows, one per mel frame ``[Q, frames, D]``: each mel frame
    takes the frame covering its centre, as :func:`video_sequence` does; past the last frame it holds."""
    seq = torch.as_tensor(seq).float()
    if seq.ndim != 3 or len(seq) != queries or not seq.shape[1]:
        raise ClipsonicError(f"sequence_embeds must be [Q={queries}, N, D] with N ≥ 1, got shape {tuple(seq.shape)}; "
                             "pass one stored frame sequence per image_embeds row")
    return torch.nn.functional.normalize(seq[:, _covering(frames, frame_rate, seq.shape[1], mel)], dim=-1)


def _covering(frames: int, frame_rate: float, n: int, mel: MelConfig) -> torch.Tensor:
    """``[frames]`` index of the picture (of ``n`` taken at ``frame_rate``, picture j covering [j/R, (j+1)/R)) on
    screen at each mel frame's centre; past the last picture, the last."""
    centres = (torch.arange(frames) + 0.5) * mel.hop_length / mel.sample_rate  # [F] seconds
    return (centres * frame_rate).floor().long().clamp(0, n - 1)
