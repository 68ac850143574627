"""Does the sound follow the picture? Onset F1 against reference event times, and the audio–visual offset.

The onset detector is SuperFlux (Böck & Widmer, "Maximum filter vibrato suppression for onset detection",
DAFx 2013) on the project's log-mel: the positive change of each band over ``lag`` frames, measured against
the maximum of its neighbouring bands, so a pitch glide (a siren, a chirp) does not count as a stream of new
onsets. The log-mel is floored :data:`RANGE_DB` under its own maximum, which makes the envelope independent of
the clip's gain: a quiet and a loud version of a sound have the same onsets. Onsets are matched one-to-one
within ± ``tolerance_s`` as in mir_eval's ``onset.f_measure`` (maximum matching). The offset cross-correlates
the onset envelope with the frames' visual activity (mean absolute change from the previous frame).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import soxr
import torch

from clipsonic.audio import MelConfig, mel_spectrogram
from clipsonic.config import Config, NonNegative, Positive
from clipsonic.errors import ClipsonicError

MEL = MelConfig()  # 16 kHz, hop 512: 31.25 envelope frames per second
RANGE_DB = 80.0  # the log-mel floor under its maximum (librosa's top_db): quieter detail is noise, not onsets
LAG = 2  # frames between the compared spectra: SuperFlux's μ, for a hop of 32 ms
MAX_BANDS = 3  # width of the maximum filter over mel bands (SuperFlux's)


@dataclasses.dataclass(frozen=True)
class SyncConfig(Config):
    """The sync measure's settings."""

    # An onset matches a reference onset within ± tolerance_s (mir_eval's default window is 0.05 s; a mel
    # frame here is 0.032 s, and video events are drawn at video frame times, 0.125 s apart at 8 fps).
    tolerance_s: Positive = 0.1
    # A peak of the envelope is an onset if it exceeds median + threshold_mads · MAD of the clip's envelope ...
    threshold_mads: NonNegative = 8.0
    # ... and this many ln units of mean flux per band (gain-free: a difference of logs), so that a clip of
    # steady noise, whose MAD is tiny, yields no onsets.
    min_strength: NonNegative = 0.1
    # Two onsets closer than this are one (the stronger kept).
    min_gap_s: Positive = 0.1
    # The audio–visual offset is searched within ± max_lag_s.
    max_lag_s: Positive = 0.5


def onset_envelope(audio: np.ndarray, sample_rate: int) -> tuple[np.ndarray, float]:
    """SuperFlux onset strength of ``audio`` ``[N]`` (any rate; resampled to 16 kHz): ``(envelope [F], rate)``,
    envelope[i] the mean positive change per mel band (ln units) at time i / rate, rate = 31.25 frames/s.
    A click at time t peaks at frame t·rate - 0.6 on average (measured): the log makes the flux jump as soon as
    the click enters the leading part of the 128-ms window; slow attacks peak later. The first and last
    0.13 s (the frames that hold padding) have no onsets."""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1 or not np.isfinite(audio).all():
        raise ClipsonicError(f"sync: audio must be one finite channel [samples], got shape {audio.shape}; "
                             "mix it down to mono and remove NaNs first")
    if sample_rate != MEL.sample_rate:
        audio = soxr.resample(audio, sample_rate, MEL.sample_rate).astype(np.float32)
    if len(audio) <= MEL.n_fft:
        raise ClipsonicError(f"sync: audio of {len(audio) / MEL.sample_rate:.3f} s is too short for onsets; "
                             f"give at least {MEL.n_fft / MEL.sample_rate:.3f} s")
    logmel = mel_spectrogram(torch.from_numpy(audio), MEL).numpy()  # [n_mels, F]
    logmel = np.maximum(logmel, logmel.max() - RANGE_DB / 20 * np.log(10))  # the mel is a magnitude: 20·log10
    from scipy.ndimage import maximum_filter1d  # scipy is imported where used: every command imports the CLI

    reference = maximum_filter1d(logmel, MAX_BANDS, axis=0)
    flux = np.maximum(logmel[:, LAG:] - reference[:, :-LAG], 0.0).mean(axis=0)  # frames LAG.. F-1
    # the first and last frames see the reflect padding, whose change is no onset
    edge = math.ceil((MEL.n_fft - MEL.hop_length) / 2 / MEL.hop_length)  # 2 frames at each end
    flux[:edge], flux[len(flux) - edge:] = 0.0, 0.0
    return np.concatenate([np.zeros(LAG), flux]), MEL.sample_rate / MEL.hop_length


def detect_onsets(envelope: np.ndarray, frame_rate: float, config: SyncConfig | None = None) -> np.ndarray:
    """Onset times in seconds ``[K]``, ascending: the envelope's peaks above the clip's own threshold,
    max(median + k·MAD, ``min_strength``), at least ``min_gap_s`` apart."""
    config = config or SyncConfig()
    envelope = np.asarray(envelope, dtype=np.float64)
    median = np.median(envelope)
    threshold = max(median + config.threshold_mads * np.median(np.abs(envelope - median)), config.min_strength)
    from scipy.signal import find_peaks

    peaks, _ = find_peaks(envelope, height=threshold, distance=max(1, round(config.min_gap_s * frame_rate)))
    return peaks / frame_rate


def onset_f1(estimated: np.ndarray, reference: np.ndarray, tolerance: float = 0.1) -> dict[str, float]:
    """Precision, recall and F1 of ``estimated`` onset times against ``reference`` (seconds), each reference
    matched to at most one estimate within ± ``tolerance``: the maximum matching, found as the assignment that
    first maximises the number of pairs within tolerance (an outside pair costs more than all inside ones) and
    then minimises their distance. Both empty: F1 1; one empty: 0. ``matched``: the number of pairs."""
    estimated, reference = np.asarray(estimated, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if not len(estimated) or not len(reference):
        score = float(len(estimated) == len(reference))
        return {"precision": score, "recall": score, "f1": score, "matched": 0}
    distance = np.abs(estimated[:, None] - reference[None, :])  # [E, R]
    inside = distance <= tolerance
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(np.where(inside, distance, tolerance * (inside.size + 1)))
    matched = int(inside[rows, cols].sum())
    precision, recall = matched / len(estimated), matched / len(reference)
    f1 = 2 * precision * recall / (precision + recall) if matched else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "matched": matched}


def visual_activity(frames: np.ndarray) -> np.ndarray:
    """How much each frame changes: the mean absolute difference of ``frames`` ``[T, H, W, 3]`` uint8 from the
    previous frame (the first: 0), ``[T]`` in levels, at the video's frame rate."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or not len(frames):
        raise ClipsonicError(f"sync: frames must be [T, H, W, 3] with T ≥ 1, got shape {frames.shape}; "
                             "decode the video to RGB frames first")
    change = np.abs(np.diff(frames.astype(np.float32), axis=0)).mean(axis=(1, 2, 3))
    return np.concatenate([[0.0], change])


def av_offset(envelope: np.ndarray, envelope_rate: float, activity: np.ndarray, video_fps: float,
              max_lag: float = 0.5) -> tuple[float, float]:
    """How much later the sound is than the picture: ``(offset_s, peak_correlation)``. activity[t] is the change
    between frames t-1 and t, so it is compared with the onset strength summed over the same interval of the
    audio, shifted by a lag d: the video's rate is the common rate, and d steps by envelope frames (32 ms).
    The offset is the d in ± ``max_lag`` that maximises the Pearson correlation of the two. Positive: the audio
    comes late (a door is seen shutting before it is heard); negative: early."""
    lags = np.arange(-round(max_lag * envelope_rate), round(max_lag * envelope_rate) + 1) / envelope_rate
    duration = min(len(envelope) / envelope_rate, len(activity) / video_fps)
    # video frames t whose interval ((t-1)/fps, t/fps], shifted by any lag, lies inside the audio
    frames = np.arange(int(np.ceil(max_lag * video_fps)) + 1, int((duration - max_lag) * video_fps) + 1)
    if len(frames) < 4:
        raise ClipsonicError(f"sync: {duration:.2f} s of audio and video is too short to find an offset within "
                             f"±{max_lag} s; give at least {2 * max_lag + 4 / video_fps:.2f} s or a smaller max_lag")
    # onset strength up to each time: the cumulative sum, linear between frames (frame i at time i / rate)
    cumulative = np.cumsum(np.asarray(envelope, dtype=np.float64))
    ends = frames / video_fps

    def strength_within(start: np.ndarray, end: np.ndarray) -> np.ndarray:
        positions = np.arange(len(cumulative))
        return np.interp(end * envelope_rate, positions, cumulative) - np.interp(start * envelope_rate, positions,
                                                                                  cumulative)

    scores = [_pearson(activity[frames], strength_within(ends - 1 / video_fps + d, ends + d)) for d in lags]
    best = int(np.argmax(scores))
    return float(lags[best]), float(scores[best])


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Correlation of two equal-length signals; 0 when either is constant (nothing to align)."""
    a, b = a - a.mean(), b - b.mean()
    norm = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / norm) if norm > 0 else 0.0


def sync_scores(audio: np.ndarray, sample_rate: int, reference_onsets: np.ndarray, frames: np.ndarray | None = None,
                fps: float | None = None, config: SyncConfig | None = None) -> dict[str, float]:
    """One clip's sync measure: ``onset_precision``, ``onset_recall``, ``onset_f1`` of the onsets of ``audio``
    ``[N]`` against ``reference_onsets`` (seconds) within ``config.tolerance_s``; with ``frames`` ``[T, H, W, 3]``
    at ``fps``, also ``av_offset_s`` (positive: the audio is late) and ``av_correlation``."""
    config = config or SyncConfig()
    envelope, rate = onset_envelope(audio, sample_rate)
    score = onset_f1(detect_onsets(envelope, rate, config), reference_onsets, config.tolerance_s)
    scores = {"onset_precision": score["precision"], "onset_recall": score["recall"], "onset_f1": score["f1"]}
    if frames is not None:
        if not fps:
            raise ClipsonicError("sync: frames were given without their fps; pass the video's frame rate")
        offset, correlation = av_offset(envelope, rate, visual_activity(frames), fps, config.max_lag_s)
        scores.update(av_offset_s=offset, av_correlation=correlation)
    return scores
