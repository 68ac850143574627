"""One video → its training clips (log-mels, frames, frame sequences), deterministically, in a decoding worker process.

Clip rule (as ``clipsonic preprocess --help`` says): clips start at the segment start and every ``stride`` seconds
while they fit whole. The next start after them (the only one for a segment shorter than a clip) gives one more,
zero-padded clip when at least ``min_clip_fraction`` of a clip of audio follows it; otherwise the audio after the last
clip is a dropped tail. Both are logged once per file and counted in dataset.json (``padded_clips``,
``dropped_tails``). Clips below ``silence_db`` dBFS RMS are dropped.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import math
from typing import Annotated, Any

import numpy as np
import soundfile
import torch
from PIL import Image

from clipsonic.audio import MelConfig, mel_spectrogram
from clipsonic.config import Config, Positive, PositiveInt, Range
from clipsonic.data.sources import SourceItem, sample_key
from clipsonic.errors import ClipsonicError
from clipsonic.media import MediaError, load_audio, load_frames, probe

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ClipOptions(Config):
    """How clips are cut from a video (all shape the data, so they are stored in dataset.json)."""

    frames_per_clip: PositiveInt = 3  # K frames evenly inside each clip; training picks one at random
    stride_seconds: Positive | None = None  # None: back-to-back clips (stride = clip length)
    max_clips_per_video: PositiveInt | None = None  # None: as many as fit (MUSIC videos run for minutes)
    # a tail (or a video shorter than a clip) becomes a zero-padded clip when it holds at least this fraction of a clip
    min_clip_fraction: Annotated[float, Range(0, 1, low_open=True)] = 0.5
    silence_db: Annotated[float, Range(high=0)] = -60.0  # clips quieter than this RMS (dBFS) are dropped as silent
    keep_audio: bool = False  # store the clip's 16 kHz audio as flac (vocoder training, FAD references)
    keep_jpg: bool = True  # store the middle frame as a small jpg (for browsing and reports)
    jpg_size: PositiveInt = 160  # longest side of the stored jpg
    # Frames are shrunk in the worker to this short side before crossing to the CLIP process:
    # CLIP processors resize to 224/336 anyway, and full-HD frames would dominate IPC.
    max_frame_side: PositiveInt = 336
    # also store a CLIP embedding sequence at this many frames per second, aligned to the mel frames (4–8 fps for
    # time-aligned video-to-audio); None: only the K frames
    frame_rate: Positive | None = None

    def to_dict(self) -> dict[str, Any]:
        # without a sequence the stored options read as before frame_rate existed: finished datasets still match
        out = super().to_dict()
        if self.frame_rate is None:
            del out["frame_rate"]
        return out


@dataclasses.dataclass
class ClipData:
    """One clip ready to embed and write. ``frames`` (K) and ``seq_frames`` (N, none without a frame rate) are RGB
    uint8 ``[H, W, 3]``."""

    key: str
    mel: np.ndarray  # float16 [n_mels, frames]
    frames: list[np.ndarray]
    meta: dict
    jpg: bytes | None = None
    flac: bytes | None = None
    seq_frames: list[np.ndarray] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class ItemResult:
    """What one source item produced: clips, or a reason it produced none."""

    clips: list[ClipData]
    reason: str | None = None  # set when no clip came out
    silent_clips: int = 0
    padded: float = 0.0  # seconds of audio in the kept zero-padded last clip (0: none)
    dropped_tail: float = 0.0  # seconds of audio after the last clip that no clip holds


@dataclasses.dataclass(frozen=True)
class ClipPlan:
    """Where a segment's clips start (s), and what became of the audio after the last whole clip."""

    starts: list[float]
    padded: float = 0.0  # seconds of audio in the last clip, which is zero-padded to a clip (0: all are whole)
    dropped_tail: float = 0.0  # seconds after the last clip too short to pad (0: none)


def plan_clips(segment_start: float, segment_seconds: float, mel: MelConfig, options: ClipOptions) -> ClipPlan:
    """The clips cut from a segment, per the module's clip rule (``max_clips_per_video`` cuts before any tail)."""
    clip_s = mel.clip_seconds
    stride = options.stride_seconds or clip_s
    whole = max(math.floor((segment_seconds - clip_s + 1e-3) / stride) + 1, 0)  # 1 ms slack: durations are rounded
    cap = options.max_clips_per_video or whole + 1
    count, padded, dropped = min(whole, cap), 0.0, 0.0
    rest = segment_seconds - whole * stride  # audio from the next start on (< one clip)
    if whole < cap and rest >= options.min_clip_fraction * clip_s:
        count, padded = whole + 1, rest
    elif whole < cap and whole:  # what follows the last clip (with gaps between clips: the next start)
        dropped = max(segment_seconds - max((whole - 1) * stride + clip_s, whole * stride), 0.0)
    return ClipPlan([round(segment_start + i * stride, 6) for i in range(count)], round(padded, 6),
                    round(dropped, 6) if dropped > 1e-3 else 0.0)


def frame_times(start: float, seconds: float, k: int) -> list[float]:
    """K times evenly placed inside ``[start, start + seconds)``: the centres of K equal parts."""
    return [round(start + (i + 0.5) * seconds / k, 6) for i in range(k)]


def sequence_length(mel: MelConfig, frame_rate: float | None) -> int:
    """N = round(clip_seconds × frame_rate), the frames of each clip's sequence (0 without a frame rate)."""
    if frame_rate is None:
        return 0
    n = round(mel.clip_seconds * frame_rate)
    if not 1 <= n <= mel.clip_frames:
        raise ClipsonicError(f"--frame-rate {frame_rate:g} gives {n} frames per {mel.clip_seconds:g}-s clip; use a "
                             f"rate from {1 / mel.clip_seconds:.3g} to {mel.clip_frames / mel.clip_seconds:.3g} "
                             "(one frame per clip to one per mel frame)")
    return n


def sequence_times(start: float, mel: MelConfig, n: int, audio_seconds: float) -> list[float]:
    """A clip's N sequence frame times, aligned to its mel: frame i is taken at the centre of the clip's i-th of N
    equal parts, so it covers mel frames ``[i·F/N, (i+1)·F/N)`` (F = ``mel.clip_frames``) and the rate is exactly
    N / clip_seconds (``frame_rate`` rounded to whole N). In a zero-padded last clip, times past its
    ``audio_seconds`` take the picture of the last part with audio (the video may end there; the mel is silence)."""
    last = round(start + audio_seconds - min(audio_seconds, mel.clip_seconds / n) / 2, 6)
    return [min(t, last) for t in frame_times(start, mel.clip_seconds, n)]


def extract_clips(item: SourceItem, mel: MelConfig, options: ClipOptions) -> ItemResult:
    """Decode one item into clips. Never raises for a bad file: the reason goes into the result."""
    try:
        return _extract(item, mel, options)
    except MediaError as exc:
        return ItemResult([], reason=str(exc))
    except Exception as exc:  # one bad video must never end the batch; the reason is kept
        log.warning("unexpected error on %s: %r", item.path, exc)
        return ItemResult([], reason=f"unexpected error: {type(exc).__name__}: {exc}")


def _extract(item: SourceItem, mel: MelConfig, options: ClipOptions) -> ItemResult:
    info = probe(item.path)
    if not (info.has_audio and info.has_video):
        return ItemResult([], reason=f"no {'video' if info.has_audio else 'audio'} stream")
    seg_start, clip_s = item.start or 0.0, mel.clip_seconds
    seg_end = info.duration if item.duration is None else min(info.duration, seg_start + item.duration)
    seg_seconds = seg_end - seg_start
    plan = plan_clips(seg_start, seg_seconds, mel, options)
    starts, k, n = plan.starts, options.frames_per_clip, sequence_length(mel, options.frame_rate)
    if not starts:
        return ItemResult([], reason=(
            f"too short: {max(seg_seconds, 0):.2f} s usable, need {options.min_clip_fraction * clip_s:.2f} s"))
    span = min(seg_seconds, starts[-1] - seg_start + clip_s)
    audio = load_audio(item.path, sample_rate=mel.sample_rate, start=seg_start, duration=span)
    if not np.isfinite(audio).all():  # NaN would slip through the silence test below (nan < x is False)
        return ItemResult([], reason="the audio holds NaN or infinite samples (a corrupt float track)")
    kept, silent = [], 0  # kept: (index in starts, start, wav, K frame times then N sequence times)
    for index, start in enumerate(starts):
        offset = int(round((start - seg_start) * mel.sample_rate))
        wav = audio[offset:offset + mel.clip_samples]
        seconds = min(clip_s, len(wav) / mel.sample_rate)
        times = frame_times(start, seconds, k) + (sequence_times(start, mel, n, seconds) if n else [])
        wav = np.pad(wav, (0, mel.clip_samples - len(wav)))
        if float(np.sqrt(np.mean(wav.astype(np.float64) ** 2))) < 10 ** (options.silence_db / 20):
            silent += 1
        else:
            kept.append((index, start, wav, times))
    if not kept:
        return ItemResult([], reason=f"silent: all {silent} clip(s) below {options.silence_db:g} dBFS RMS",
                          silent_clips=silent)
    frames = [_shrink(f, options.max_frame_side) for f in load_frames(item.path, [t for *_, ts in kept for t in ts])]
    mels = mel_spectrogram(torch.from_numpy(np.stack([w for _, _, w, _ in kept])), mel).numpy().astype(np.float16)
    clips = []
    for i, (index, start, wav, times) in enumerate(kept):
        clip_frames = frames[i * (k + n):(i + 1) * (k + n)]
        meta = {"source": str(item.path), "start": start, "frame_times": times[:k], "label": item.label,
                "split": item.split, "item": item.key} | ({"seq_times": times[k:]} if n else {})
        clips.append(ClipData(
            key=sample_key(item.key, index), mel=mels[i], frames=clip_frames[:k], meta=meta,
            jpg=_jpeg(clip_frames[k // 2], options.jpg_size) if options.keep_jpg else None,
            flac=_flac(wav, mel.sample_rate) if options.keep_audio else None, seq_frames=clip_frames[k:]))
    padded = plan.padded if plan.padded and kept[-1][0] == len(starts) - 1 else 0.0  # unless dropped as silent
    return ItemResult(clips, silent_clips=silent, padded=padded, dropped_tail=plan.dropped_tail)


def _shrink(frame: np.ndarray, max_side: int) -> np.ndarray:
    h, w = frame.shape[:2]
    if min(h, w) <= max_side:
        return frame
    scale = max_side / min(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(frame).resize(size, Image.BICUBIC))


def _jpeg(frame: np.ndarray, size: int) -> bytes:
    img = Image.fromarray(frame)
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def _flac(wav: np.ndarray, sample_rate: int) -> bytes:
    buf = io.BytesIO()
    soundfile.write(buf, np.clip(wav, -1.0, 1.0), sample_rate, format="FLAC", subtype="PCM_16")
    return buf.getvalue()
