"""Audio in: the source of variations (SDEdit), inpainting and continuation, and long sounds window after window.

The source's log-mel is computed with the pipeline's MelConfig and scaled like training mels (clipsonic.audio); the
sampling tricks themselves live in clipsonic.diffusion (``GaussianDiffusion.sample``'s x_init/strength and
known/known_mask, and diffusion/windows.py's MultiDiffusion wrapper for ``long="windows"``).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from clipsonic.audio import MelConfig, mel_spectrogram, normalize
from clipsonic.diffusion.windows import window_starts
from clipsonic.errors import ClipsonicError
from clipsonic.media import load_audio
from clipsonic.pipeline.queries import MAX_SECONDS, resolve_frames

# How a mel longer than the training length is made: MultiDiffusion windows averaged at every step, windows made
# one after another (each inpainting its first half from the previous one's tail), or the old one long mel.
LONG_MODES = ("windows", "continuation", "single")


@dataclasses.dataclass
class Edit:
    """What a call does with its source audio, for an output of F frames."""

    x_init: Tensor  # [1, 1, n_mels, F] the source in diffusion space, cropped or padded (last frame repeated) to F
    keep: Tensor | None  # [1, 1, 1, F] bool: the frames kept from the source; None: a plain variation
    strength: float  # SDEdit strength of what is generated

    def sample_args(self) -> dict[str, Any]:
        """As CLIPSonicPipeline._denoise takes them: GaussianDiffusion.sample's x_init, strength, known, known_mask."""
        return dict(x_init=self.x_init, strength=self.strength, known=None if self.keep is None else self.x_init,
                    keep=self.keep)


def edge_frames(mel: MelConfig) -> int:
    """Mel frames at a clip's end whose STFT window reaches past it into the reflect padding (2 at n_fft 2048, hop 512).

    Training mels are whole clips, so the model learned such frames as what a clip's edge looks like, and a source's
    own last frames are one too: a join that keeps them leaves a seam. Continuations regenerate them: on the built-in
    model the frame-to-frame distance at continuation joins fell from 3.4x the one inside windows to 1.0x.
    """
    return math.ceil((mel.n_fft + mel.hop_length) / (2 * mel.hop_length)) - 1


def source_mel(audio: Any, mel: MelConfig) -> Tensor:
    """The normalised log-mel ``[n_mels, frames]`` of ``audio``: a file path (its sound decoded at the pipeline's
    rate) or float32 mono samples at that rate. Bad audio is a one-line ClipsonicError naming it."""
    if isinstance(audio, str | os.PathLike):
        name, samples = str(audio), load_audio(audio, sample_rate=mel.sample_rate)  # MediaError names the file
    else:
        name, samples = "audio samples", np.asarray(audio, dtype=np.float32)
        if samples.ndim != 1 or not np.isfinite(samples).all():
            raise ClipsonicError(f"audio must be finite mono samples [samples] at {mel.sample_rate} Hz or a file path, "
                                 f"got an array of shape {list(samples.shape)}")
    least = mel.n_fft  # mel_spectrogram needs more than (n_fft - hop)/2 samples; a whole FFT window is a sane floor
    if len(samples) < least:
        raise ClipsonicError(f"{name}: {len(samples)} samples of audio is too short to edit; give at least {least} "
                             f"({least / mel.sample_rate:.3f} s at {mel.sample_rate} Hz)")
    return normalize(mel_spectrogram(torch.from_numpy(samples), mel), mel)


def load_source(audio: Any, mel: MelConfig, *, strength: Any, mask: Any, long: Any,
                seconds: float | None) -> tuple[Tensor | None, float | None]:
    """A call's edit arguments checked, the source's normalised log-mel [n_mels, S] (None without audio) and the
    output's length in seconds: ``seconds``, else the audio's (None: neither, the pipeline's default)."""
    check_edit_args(strength, mask, long)
    if audio is None:
        if strength is not None or mask is not None:
            raise ClipsonicError("strength and mask edit a sound: pass audio (a file or samples) with them")
        return None, seconds
    src = source_mel(audio, mel)
    length = src.shape[-1] * mel.hop_length / mel.sample_rate
    if seconds is None and length > MAX_SECONDS:
        raise ClipsonicError(f"{audio if isinstance(audio, str | os.PathLike) else 'the audio'} lasts {length:.1f} s, "
                             f"over the {MAX_SECONDS:g}-s limit; pass seconds to edit its beginning")
    return src, length if seconds is None else seconds


def check_edit_args(strength: Any, mask: Any, long: Any) -> None:
    """One-line errors for a strength outside [0, 1], a mask that is not (start_s, end_s or None), an unknown long."""
    if strength is not None and (isinstance(strength, bool) or not isinstance(strength, int | float)
                                 or not 0.0 <= strength <= 1.0):
        raise ClipsonicError(f"strength must be a number in [0, 1] (0: the audio as it is, 1: all new), got {strength!r}")
    if mask is not None:
        ok = isinstance(mask, list | tuple) and len(mask) == 2 and all(
            v is None or (isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)) for v in mask)
        if not ok or mask[0] is None or mask[0] < 0 or (mask[1] is not None and mask[1] <= mask[0]):
            raise ClipsonicError(f"mask must be (start_s, end_s) with 0 <= start_s < end_s, or (start_s, None) to the "
                                 f"end: the span to regenerate; got {mask!r}")
    if long is not None and long not in LONG_MODES:
        raise ClipsonicError(f"long must be one of {list(LONG_MODES)}, got {long!r}")


def plan_edit(src: Tensor, frames: int, mel: MelConfig, multiple: int, *, strength: float | None, mask: Any,
              seconds: float | None) -> Edit:
    """The source ``src`` [n_mels, S] fitted to ``frames`` (a multiple of ``multiple``), the kept frames, the strength.

    ``mask`` (start_s, end_s or None) is the span to regenerate; frames past the source are always regenerated.
    When ``seconds`` asks for more than the source (rounded as lengths are), the mask defaults to (source end, None)
    less the source's :func:`edge_frames`: a continuation. A plain variation (no mask) needs ``strength``; with a mask
    it defaults to 1.
    """
    have = src.shape[-1]
    frame_s = mel.hop_length / mel.sample_rate
    if mask is None and seconds is not None and frames > resolve_frames(have * frame_s, None, mel, multiple):
        mask = (max(0, have - edge_frames(mel)) * frame_s, None)
    if mask is None and strength is None:
        raise ClipsonicError("a variation of audio needs strength (0: the audio as it is, 1: a new sound; e.g. 0.5), "
                             "or a mask (start_s, end_s) to regenerate a span and keep the rest")
    x_init = src[:, :frames] if have >= frames else torch.cat([src, src[:, -1:].expand(-1, frames - have)], dim=-1)
    keep = None
    if mask is not None:
        start = round(mask[0] / frame_s)
        end = frames if mask[1] is None else min(frames, round(mask[1] / frame_s))
        if start >= end:
            raise ClipsonicError(f"mask {tuple(mask)} covers no frame of the {frames * frame_s:.3f}-s output; "
                                 "give a span inside it (seconds)")
        index = torch.arange(frames)
        keep = ((index < start) | (index >= end)) & (index < have)
        keep = keep.view(1, 1, 1, frames)
    return Edit(x_init[None, None], keep, 1.0 if strength is None else float(strength))


def continue_in_windows(denoise: Callable[..., Tensor], x_T: Tensor, window: int, edge: int, *, edit: Edit | None,
                        progress: Callable[[int, int], None] | None = None) -> Tensor:
    """A long mel [B, C, H, F] window after window of ``window`` frames, each inpainting its first half window (and
    whatever ``edit`` keeps) from what is already made, less the previous window's last ``edge`` frames
    (:func:`edge_frames`). ``denoise(x_T, *, x_init, strength, known, keep, progress)`` samples one window; windows
    the edit keeps whole are not sampled. x_T's slices are each window's noise."""
    batch, frames = x_T.shape[0], x_T.shape[-1]
    starts = window_starts(frames, window, window // 2)
    made = torch.zeros_like(x_T) if edit is None else edit.x_init.expand_as(x_T).clone()  # [B, C, H, F]
    kept = torch.zeros((batch, 1, 1, frames), dtype=torch.bool)
    if edit is not None and edit.keep is not None:
        kept = kept | edit.keep
    done = 0  # frames [0, done) are made
    for n, s in enumerate(starts):
        part = slice(s, s + window)
        keep = kept[..., part].clone()
        keep[..., : max(0, done - edge - s)] = True
        if not bool(keep.all()):
            report = None if progress is None else (lambda i, k, n=n: progress(n * k + i, len(starts) * k))
            known = made[..., part].clone()
            made[..., part] = denoise(
                x_T[..., part].contiguous(), x_init=known if edit is not None or n else None,
                strength=edit.strength if edit else 1.0, known=known if keep.any() else None,
                keep=keep if keep.any() else None, progress=report).to(made.device)
        done = s + window
    return made
