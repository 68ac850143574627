"""SonicWorld's acoustics: a harmonic (or bell-like) tone times an amplitude envelope, plus faint noise.

A sound is an ``f0``, a :data:`TIMBRES` entry (partials, the fundamental strongest) and a
:data:`RHYTHMS` envelope, which never falls below :data:`ENVELOPE_FLOOR` so the pitch shows in
every mel frame. Per clip: f0 and gain jitter, random phases, a white noise floor; everything a
pure function of its arguments and a numpy Generator.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from clipsonic.errors import ClipsonicError

SAMPLE_RATE = 16000
F0_JITTER = 0.03  # ±3 %: far less than the ≥ 40 % steps between the concepts' fundamentals
GAIN_JITTER_DB = 3.0
PEAK_DBFS = -6.0  # headroom for AAC's overshoot
NOISE_DBFS = -40.0  # RMS of the white noise floor
ENVELOPE_FLOOR = 0.2  # the "off" level of pulses: -14 dB, audible in every frame
RAMP_S = 0.010  # pulse edges: 10-ms raised-cosine ramps (no clicks)
MAX_PARTIAL_HZ = 7500.0  # partials above this are dropped (below 8 kHz Nyquist, inside AAC's band)


# name -> ((frequency ratio, amplitude), ...); the fundamental (ratio 1) is the strongest partial.
TIMBRES: dict[str, tuple[tuple[float, float], ...]] = {
    "sine": ((1, 1.0),),
    "soft": ((1, 1.0), (2, 0.5), (3, 0.25)),
    "square": tuple((k, 1 / k) for k in (1, 3, 5, 7)),
    "saw": tuple((k, 1 / k) for k in range(1, 7)),
    "bright": ((1, 1.0), (2, 0.8), (3, 0.7), (4, 0.6)),
    "reed": tuple((k, 1 / k**2) for k in (1, 3, 5, 7)),
    "bell": ((1, 1.0), (2.76, 0.5), (5.40, 0.3)),  # inharmonic, like a struck bar
    "hollow": ((1, 1.0), (3, 0.5), (5, 0.3)),  # 1, 0, .5, 0, .3: odd partials only
}


@dataclasses.dataclass(frozen=True)
class Rhythm:
    """An amplitude envelope: ``steady``, ``pulse`` (on/off at ``rate`` Hz) or ``tremolo`` (a sinusoid)."""

    kind: str
    rate: float = 0.0  # Hz; at least 1 so the pattern shows within a 1.024-s window
    on_fraction: float = 0.6  # pulses: the fraction of each period at full level
    depth: float = 0.6  # tremolo: gain swings between 1 and 1 - depth


RHYTHMS: dict[str, Rhythm] = {
    "steady": Rhythm("steady"),
    "pulse2": Rhythm("pulse", 2.0),
    "pulse3": Rhythm("pulse", 3.0),
    "pulse4": Rhythm("pulse", 4.0),
    "pulse5": Rhythm("pulse", 5.0),
    "tremolo3": Rhythm("tremolo", 3.0),
    "tremolo6": Rhythm("tremolo", 6.0),
}


def envelope(rhythm: Rhythm, t: np.ndarray, phase: float) -> np.ndarray:
    """Gain in [ENVELOPE_FLOOR or 1 - depth, 1] at times ``t`` ``[N]``; ``phase`` in [0, 1) periods."""
    if rhythm.kind == "steady":
        return np.ones_like(t)
    cycles = t * rhythm.rate + phase
    if rhythm.kind == "tremolo":
        return 1.0 - rhythm.depth * 0.5 * (1.0 - np.cos(2 * np.pi * cycles))
    if rhythm.kind == "pulse":
        period = 1.0 / rhythm.rate
        u = (cycles % 1.0) * period  # seconds into the current period
        on = rhythm.on_fraction * period
        # raised-cosine ramps up over [0, RAMP_S] and down over [on - RAMP_S, on]
        rise = np.clip(u / RAMP_S, 0.0, 1.0)
        fall = np.clip((on - u) / RAMP_S, 0.0, 1.0)
        shape = 0.5 - 0.5 * np.cos(np.pi * np.minimum(rise, fall))
        return ENVELOPE_FLOOR + (1.0 - ENVELOPE_FLOOR) * shape
    raise ClipsonicError(f"unknown rhythm kind {rhythm.kind!r}; use steady, pulse or tremolo")


def partials(f0: float, timbre: str) -> list[tuple[float, float]]:
    """``[(frequency Hz, amplitude)]`` of ``timbre`` on ``f0``, without those above :data:`MAX_PARTIAL_HZ`."""
    if timbre not in TIMBRES:
        raise ClipsonicError(f"unknown timbre {timbre!r}; choose one of {sorted(TIMBRES)}")
    return [(f0 * ratio, amp) for ratio, amp in TIMBRES[timbre] if f0 * ratio <= MAX_PARTIAL_HZ]


def synthesize(f0: float, timbre: str, rhythm: str, num_samples: int, rng: np.random.Generator, *,
               sample_rate: int = SAMPLE_RATE, jitter: bool = True, noise: bool = True) -> np.ndarray:
    """One clip: float32 ``[num_samples]`` peaking near :data:`PEAK_DBFS` (± the gain jitter).

    With ``jitter=False`` the clip has the nominal f0 and gain and zero phases (the oracle's
    templates); the generator is still consumed the same way, so clips stay reproducible.
    """
    if rhythm not in RHYTHMS:
        raise ClipsonicError(f"unknown rhythm {rhythm!r}; choose one of {sorted(RHYTHMS)}")
    if not 0 < f0 < sample_rate / 2:
        raise ClipsonicError(f"f0 {f0} Hz is outside (0, {sample_rate / 2}) Hz at {sample_rate} Hz sampling")
    # Draw every random number up front, in a fixed order, whatever the flags say.
    f0_factor = math.exp(rng.uniform(-1.0, 1.0) * math.log1p(F0_JITTER))
    gain_db = rng.uniform(-GAIN_JITTER_DB, GAIN_JITTER_DB)
    phases = rng.uniform(0.0, 2 * np.pi, len(TIMBRES[timbre]))
    env_phase = rng.uniform()
    floor = rng.standard_normal(num_samples)
    if not jitter:
        f0_factor, gain_db, phases, env_phase = 1.0, 0.0, np.zeros_like(phases), 0.0

    t = np.arange(num_samples) / sample_rate
    tone = np.zeros(num_samples)
    for (freq, amp), phase in zip(partials(f0 * f0_factor, timbre), phases, strict=False):
        tone += amp * np.sin(2 * np.pi * freq * t + phase)
    tone *= envelope(RHYTHMS[rhythm], t, env_phase)
    peak = np.abs(tone).max() if num_samples else 1.0
    audio = tone * (10 ** ((PEAK_DBFS + gain_db) / 20) / max(peak, 1e-12))
    if noise:
        audio += floor * 10 ** (NOISE_DBFS / 20)
    return audio.astype(np.float32)
