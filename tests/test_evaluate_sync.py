"""The sync measure: onsets of bursts at known times, the one-to-one F1, the audio–visual offset, and a StampWorld
clip against its own event times."""

from __future__ import annotations

import numpy as np
import pytest
from support.stamps import make_stamps

from clipsonic.errors import ClipsonicError
from clipsonic.evaluate.sync import (
    SyncConfig,
    av_offset,
    detect_onsets,
    onset_envelope,
    onset_f1,
    sync_scores,
    visual_activity,
)
from clipsonic.stampworld import StampWorldConfig, make_clip

RATE = 16000
TIMES = np.array([0.5, 1.375, 2.25, 3.0, 3.625])  # on the 8-fps video grid, at least 0.6 s apart
FPS = 8


def bursts(gain: float = 1.0, seed: int = 0) -> np.ndarray:
    """4.096 s of -50 dBFS noise with 40-ms decaying noise bursts at :data:`TIMES`: float32 ``[65536]``."""
    rng = np.random.default_rng(seed)
    audio = rng.normal(0.0, 10 ** (-50 / 20), 65536)
    burst = rng.normal(0.0, 0.3, 640) * np.exp(-np.arange(640) / 160)
    for t in TIMES:
        audio[round(t * RATE):round(t * RATE) + len(burst)] += burst
    return (gain * audio).astype(np.float32)


def cuts(times: np.ndarray, seed: int = 0) -> np.ndarray:
    """33 frames ``[T, 8, 8, 3]`` of a flat colour that changes to a new one at each of ``times`` (seconds)."""
    rng = np.random.default_rng(seed)
    levels = np.full(33, 100.0)
    for t in times:
        levels[round(t * FPS):] = rng.uniform(0, 255)
    return np.broadcast_to(levels[:, None, None, None], (33, 8, 8, 3)).astype(np.uint8)


def test_bursts_are_found_within_a_frame_at_any_gain():
    envelope, rate = onset_envelope(bursts(), RATE)
    assert rate == 31.25 and envelope.shape == (128,)
    onsets = detect_onsets(envelope, rate)
    assert len(onsets) == len(TIMES) and np.abs(onsets - TIMES).max() <= 1 / rate
    assert onset_f1(onsets, TIMES)["f1"] == 1.0
    assert onset_f1(onsets, TIMES + 0.15)["f1"] == 0.0  # beyond the 0.1-s tolerance
    quiet = detect_onsets(*onset_envelope(bursts(gain=0.5), RATE))
    assert np.array_equal(quiet, onsets)
    resampled = detect_onsets(*onset_envelope(bursts()[::2].copy(), RATE // 2))  # 8 kHz input, resampled
    assert np.abs(resampled - TIMES).max() <= 1 / rate


def test_steady_noise_has_no_onsets():
    noise = np.random.default_rng(1).normal(0.0, 0.1, 65536)
    assert len(detect_onsets(*onset_envelope(noise, RATE))) == 0


def test_onset_f1_counts_a_maximum_one_to_one_matching():
    assert onset_f1([], [])["f1"] == 1.0
    assert onset_f1([1.0], [])["f1"] == 0.0 and onset_f1([], [1.0])["f1"] == 0.0
    # 3 estimates, 4 references, 2 within 0.1 s: P 2/3, R 1/2
    score = onset_f1([0.5, 1.05, 3.0], [0.52, 1.0, 2.0, 2.5])
    assert score["matched"] == 2 and score["precision"] == pytest.approx(2 / 3) and score["recall"] == 0.5
    assert score["f1"] == pytest.approx(4 / 7)
    # one estimate cannot count for two references
    assert onset_f1([1.0], [0.98, 1.02])["matched"] == 1
    # nearest-first pairing would take (0.12, 0.07) and leave 1; the maximum matching pairs both
    assert onset_f1([0.0, 0.12], [0.07, 0.19])["matched"] == 2


@pytest.mark.parametrize("shift", [2, -1])
def test_av_offset_recovers_a_shift_of_the_picture(shift):
    envelope, rate = onset_envelope(bursts(), RATE)
    activity = visual_activity(cuts(TIMES - shift / FPS))  # the picture shift/FPS s before (after) the sound
    assert activity[0] == 0 and activity.shape == (33,)
    offset, correlation = av_offset(envelope, rate, activity, FPS)
    assert abs(offset - shift / FPS) <= 1 / FPS and correlation > 0.7
    # activity unrelated to the sound: the best of 31 lags of ~22 frames reaches only chance level (0.3-0.55)
    unrelated = np.random.default_rng(1).uniform(0, 10, 33)
    assert av_offset(envelope, rate, unrelated, FPS)[1] < 0.5


def test_sync_scores_bundle_and_bad_inputs():
    scores = sync_scores(bursts(), RATE, TIMES, cuts(TIMES - 1 / FPS), FPS)
    assert scores["onset_f1"] == 1.0 and scores["onset_precision"] == scores["onset_recall"] == 1.0
    assert scores["av_offset_s"] == pytest.approx(1 / FPS, abs=1 / FPS) and scores["av_correlation"] > 0.7
    assert set(sync_scores(bursts(), RATE, TIMES)) == {"onset_precision", "onset_recall", "onset_f1"}
    strict = sync_scores(bursts(), RATE, TIMES + 0.03, config=SyncConfig(tolerance_s=0.01))
    assert strict["onset_f1"] < 1.0
    for call in (lambda: onset_envelope(np.zeros((2, 4096)), RATE), lambda: onset_envelope(np.zeros(100), RATE),
                 lambda: visual_activity(np.zeros((4, 8, 8))),
                 lambda: sync_scores(bursts(), RATE, TIMES, cuts(TIMES))):
        with pytest.raises(ClipsonicError):
            call()


def test_stampworld_clips_onsets_match_their_events(tmp_path):
    stamps, config = make_stamps(tmp_path), StampWorldConfig(size=16, fps=FPS)
    f1 = []
    for index in range(6):
        frames, audio, events = make_clip(config, "train", index, 0, stamps)
        f1.append(sync_scores(audio, config.sample_rate, [e["onset_s"] for e in events], frames, FPS)["onset_f1"])
    assert np.mean(f1) >= 0.8, f1
