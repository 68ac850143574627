"""SonicWorld's timed events: when each concept of an event clip sounds and shows.

An event is ``{"concept", "onset_s", "seconds"}`` (StampWorld's words). Onsets and lengths lie on the video
frame grid, so the picture switches exactly when the sound starts; each event ends in a decay, and the
object fades with its sound (:func:`opacity`), so the picture changes most at onsets. :func:`event_gain`
gates a concept's tone to its events.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

ATTACK_S = 0.005  # raised-cosine fade-in: a sharp onset
# Raised-cosine decay over an event's last 0.25 s (its shortest length): a short fade-out splatters over the
# spectrum and reads as an onset, and the fading object changes the picture less than its appearance.
RELEASE_S = 0.25
# Onsets at least this far apart, and this much silence between two events of one concept, so that every
# onset is its own (the sync measure merges onsets closer than 0.1 s and matches within ± 0.1 s).
MIN_GAP_S = 0.25


def gap_frames(fps: int) -> int:
    """:data:`MIN_GAP_S` in whole video frames (at least one)."""
    return max(1, int(np.ceil(MIN_GAP_S * fps - 1e-9)))


def plan_events(names: Sequence[str], rng: np.random.Generator, *, max_events: int, lengths: tuple[int, int],
                slots: int, fps: int) -> list[dict]:
    """1..``max_events`` events of each concept of ``names`` (in turn), sorted by onset. An event lasts
    ``lengths[0]..lengths[1]`` frames, starts at frame 1 or later (a sound there from the clip's first sample has
    no onset to detect) and ends by frame ``slots``; its onset is :func:`gap_frames` from every other onset and,
    for its own concept, after that much silence (events of one concept never overlap; of two concepts they may).
    An event with no room left is dropped."""
    gap, taken = gap_frames(fps), []  # taken: (name, first frame, frames)
    for name in names:
        for _ in range(int(rng.integers(1, max_events + 1))):
            m = int(rng.integers(lengths[0], lengths[1] + 1))
            free = [k for k in range(1, slots - m + 1)
                    if all(abs(k - j) >= gap and (n != name or k >= j + n_frames + gap or k + m + gap <= j)
                           for n, j, n_frames in taken)]
            if free:
                taken.append((name, free[int(rng.integers(len(free)))], m))
    return [{"concept": n, "onset_s": k / fps, "seconds": m / fps} for n, k, m in sorted(taken, key=lambda e: e[1])]


def fade(u: np.ndarray, seconds: float) -> np.ndarray:
    """An event's level at ``u`` ``[N]`` seconds since its onset: :data:`ATTACK_S` up, hold, :data:`RELEASE_S`
    down to 0 at ``seconds``; raised-cosine ramps, 0 outside the event."""
    ramp = np.clip(np.minimum(u / ATTACK_S, (seconds - u) / RELEASE_S), 0.0, 1.0)
    return 0.5 - 0.5 * np.cos(np.pi * ramp)


def event_gain(events: Sequence[dict], name: str, num_samples: int, sample_rate: int,
               rhythm: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Concept ``name``'s gain over the clip ``[num_samples]``: within each of its events ``rhythm(seconds since
    the onset)`` × :func:`fade`, so each event starts at its rhythm's onset; 0 elsewhere."""
    gain = np.zeros(num_samples)
    for e in events:
        if e["concept"] == name:
            start, length = round(e["onset_s"] * sample_rate), round(e["seconds"] * sample_rate)
            u = np.arange(min(length, num_samples - start)) / sample_rate
            gain[start:start + len(u)] = rhythm(u) * fade(u, e["seconds"])
    return gain


def opacity(events: Sequence[dict], names: Sequence[str], num_frames: int, fps: int) -> np.ndarray:
    """``[K, T]`` in [0, 1]: how much of concept ``names[k]``'s object frame t shows, its events' mean
    :func:`fade` over the frame's interval [t, t + 1) / fps (sampled at 1 ms): 1 from the onset frame, fading in
    the decay, 0 outside its events."""
    u = np.arange(num_frames * 1000) / (1000 * fps)  # [T · 1000], the frames' intervals
    alpha = np.zeros((len(names), len(u)))
    for e in events:
        alpha[list(names).index(e["concept"])] += fade(u - e["onset_s"], e["seconds"])
    return alpha.reshape(len(names), num_frames, 1000).mean(axis=2)
