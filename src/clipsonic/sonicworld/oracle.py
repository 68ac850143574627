"""An exact judge of SonicWorld sounds: which concept made this clip? It must hear the whole sound: the
spectrum, the timbre and the rhythm.

All three tests read the log-mel ``L[m, f]`` (64 bands, 31.25 frames/s), so generated mels are judged
without a vocoder. With templates synthesised by :func:`~clipsonic.sonicworld.world.synthesize` (no
jitter, the f0 scaled by each factor g of a grid spanning the ±3 % jitter):

1. **Spectrum** (the lenient matched filter): the time-averaged profile ``p[m] = mean_f L[m, f]`` against
   concept k's own sound, ``score[k] = max_g corr(p, T[k, g])`` (Pearson: blind to gain and vocoder
   scaling); the candidate is ``k* = argmax_k score[k]``. The fundamentals are ≥ 1.4× apart.
2. **Timbre**: ``c[τ] = max_g corr(p, U[k*, τ, g])`` for every timbre τ played steadily at k*'s f0. The
   clip passes if k*'s own timbre is the best (so a sine, or any other partial structure, at the right
   pitch fails) and ``c[own] ≥`` :data:`MIN_TIMBRE_CORR`.
3. **Rhythm**: the envelope ``e[f] = ln Σ_m a[m] exp(L[m, f])``, the clip's mel magnitude weighted by
   k*'s partials ``a[m]`` (so the noise floor barely moves it), without :data:`EDGE_FRAMES` at each end
   (padding artefacts), is cut into windows of :data:`WINDOW` frames (hop WINDOW/2). For each rhythm r,
   ``d[r] = mean_windows min_φ rms(e - mean e - (E[r, φ] - mean E[r, φ]))``: the distance, in nepers, to the
   envelope of k*'s sound played with rhythm r at :data:`PHASES` phases φ. Fixed gain: a steady sound has
   ``d[steady] = std e``, so depth counts as much as shape and rate. The clip passes if k*'s own rhythm is
   the nearest. A clip with fewer than :data:`MIN_RHYTHM_FRAMES` frames left after the trim (one period of
   the slowest rhythm) passes this test untold: spectrum and timbre alone judge it.

The verdict is k* if all three pass, else :data:`NONE`, as for silence (loudest band below white noise at
:data:`SILENCE_DBFS`) and, with ``min_score``, a low spectral score. ``strict=False`` keeps test 1 alone.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import soxr
import torch

from clipsonic.audio import MelConfig, mel_spectrogram
from clipsonic.errors import ClipsonicError
from clipsonic.sonicworld.world import CONCEPT_NAMES, CONCEPTS, F0_JITTER, RHYTHMS, TIMBRES, synthesize

NONE = -1  # the answer for silence and for sounds like no concept
SILENCE_DBFS = -60.0
_TEMPLATE_SAMPLES = 32768  # 2.048 s: every rhythm completes several periods
_GRID = 7  # f0 factors across ±F0_JITTER, so no clip is more than ~0.5 % from a template
TIMBRE_NAMES = tuple(TIMBRES)
RHYTHM_NAMES = tuple(RHYTHMS)
# A floor for spectra near no timbre (mush, noise): real clips after AAC and after Griffin-Lim correlate ≥ 0.94
# with their own timbre; a sine at the right pitch is caught by the sine template winning, not by this floor.
MIN_TIMBRE_CORR = 0.8
WINDOW = 32  # frames (1.024 s, one training clip): 2-5 periods of every rhythm, phase-locked within it
EDGE_FRAMES = 2  # the reflect padding of the first and last frames lifts their energy by up to 1 neper
MIN_RHYTHM_FRAMES = 16  # 0.512 s: one period of the slowest rhythm (2 Hz)
PHASES = 16  # envelope phases per rhythm: steps under one frame even at 2 Hz (15.6 frames a period)
_TIMBRE_SAMPLES = 8192  # steady tones: 16 frames of profile are plenty


@dataclasses.dataclass(frozen=True)
class Hearing:
    """What the oracle heard in each of B clips, test by test (see the module docstring)."""

    concept: np.ndarray  # int64 [B]: k*, the spectral matched filter's concept (NONE: silence or min_score)
    score: np.ndarray  # [B]: score[k*], the spectral correlation
    timbre: np.ndarray  # int64 [B]: index in TIMBRE_NAMES of the best timbre at k*'s f0
    timbre_score: np.ndarray  # [B]: c[own timbre of k*]
    rhythm: np.ndarray  # int64 [B]: index in RHYTHM_NAMES of the nearest rhythm; -1: too short to tell
    rhythm_distance: np.ndarray  # [B, R]: d[r] in nepers (NaN when too short)

    @property
    def verdict(self) -> np.ndarray:
        """int64 ``[B]``: k* where spectrum, timbre and rhythm all agree, else :data:`NONE`."""
        known = self.concept != NONE
        own = np.where(known, self.concept, 0)
        own_timbre = np.array([TIMBRE_NAMES.index(CONCEPTS[k].timbre) for k in own], dtype=np.int64)
        own_rhythm = np.array([RHYTHM_NAMES.index(CONCEPTS[k].rhythm) for k in own], dtype=np.int64)
        timbre_ok = (self.timbre == own_timbre) & (self.timbre_score >= MIN_TIMBRE_CORR)
        rhythm_ok = (self.rhythm == own_rhythm) | (self.rhythm < 0)
        return np.where(known & timbre_ok & rhythm_ok, self.concept, NONE).astype(np.int64)


class OracleClassifier:
    """Classifier of SonicWorld sounds on the default :class:`MelConfig` (the diffusion model's); :meth:`classify`
    is the relevance classifier of evaluate. Strict (default): spectrum, timbre and rhythm must all be the concept's;
    ``strict=False``: the spectrum alone. Clips scoring below ``min_score`` get :data:`NONE`."""

    name = "sonicworld"
    labels = CONCEPT_NAMES

    def __init__(self, min_score: float | None = None, strict: bool = True) -> None:
        self.mel_config = MelConfig()
        self.min_score, self.strict = min_score, strict
        # [K, G, M] spectral, [K, Tau, G, M] timbre templates, [K, M] band weights, [K, R, P, WINDOW] envelopes
        self.templates, self.timbre_templates, self.band_weights, self.envelopes = _templates(self.mel_config)
        quiet = np.random.default_rng(0).standard_normal(_TEMPLATE_SAMPLES).astype(np.float32)
        quiet *= 10 ** (SILENCE_DBFS / 20)
        self.silence_level = float(self._profiles(self.mels(quiet, self.mel_config.sample_rate)).max())

    def _profiles(self, logmels) -> np.ndarray:
        """Time-averaged log-mels ``[B, M, F]`` (or one ``[M, F]``) → ``[B, M]`` (float64)."""
        return _check(logmels, self.mel_config.n_mels).double().mean(dim=-1).cpu().numpy()

    def scores(self, logmels) -> np.ndarray:
        """Spectral correlation of each clip with each concept ``[B, K]`` (in [-1, 1]) from log-mels ``[B, M, F]``."""
        corr = np.einsum("bm,kgm->bkg", _standardise(self._profiles(logmels)), self.templates)
        return corr.max(axis=-1)

    def hear(self, logmels) -> Hearing:
        """Each test's finding for log-mels ``[B, M, F]`` (see :class:`Hearing`)."""
        logmels = _check(logmels, self.mel_config.n_mels).double().cpu()
        profiles = self._profiles(logmels)
        scores = self.scores(logmels)
        concept = scores.argmax(axis=1).astype(np.int64)
        rows = np.arange(len(concept))
        score = scores[rows, concept]
        timbres = np.einsum("bm,btgm->btg", _standardise(profiles), self.timbre_templates[concept]).max(axis=-1)
        own_timbre = [TIMBRE_NAMES.index(CONCEPTS[k].timbre) for k in concept]
        distance = self._rhythm_distances(logmels, concept)  # [B, R]
        rhythm = np.where(np.isnan(distance).any(axis=1), -1, np.nan_to_num(distance, nan=np.inf).argmin(axis=1))
        concept[profiles.max(axis=1) < self.silence_level] = NONE
        if self.min_score is not None:
            concept[score < self.min_score] = NONE
        return Hearing(concept, score, timbres.argmax(axis=1).astype(np.int64), timbres[rows, own_timbre],
                       rhythm.astype(np.int64), distance)

    def _rhythm_distances(self, logmels: torch.Tensor, concept: np.ndarray) -> np.ndarray:
        """d[b, r] (module docstring, test 3) for log-mels ``[B, M, F]`` heard as ``concept`` ``[B]``; NaN rows for
        clips with fewer than MIN_RHYTHM_FRAMES frames between the trimmed edges."""
        weights = torch.from_numpy(self.band_weights[concept]).log()  # [B, M]
        energy = torch.logsumexp(logmels + weights[:, :, None], dim=1).numpy()  # [B, F]
        energy = energy[:, EDGE_FRAMES:energy.shape[1] - EDGE_FRAMES]
        frames = energy.shape[1]
        if frames < MIN_RHYTHM_FRAMES:
            return np.full((len(concept), len(RHYTHM_NAMES)), np.nan)
        width = min(frames, WINDOW)
        starts = range(0, frames - width + 1, WINDOW // 2)
        templates = self.envelopes[concept][..., :width]  # [B, R, P, W]
        templates = templates - templates.mean(axis=-1, keepdims=True)
        total = np.zeros((len(concept), len(RHYTHM_NAMES)))
        for start in starts:
            window = energy[:, start:start + width]
            window = window - window.mean(axis=-1, keepdims=True)  # [B, W]: gain is an offset in nepers
            rms = np.sqrt(((window[:, None, None] - templates) ** 2).mean(axis=-1))  # [B, R, P]
            total += rms.min(axis=-1)
        return total / len(starts)

    def classify_mels(self, logmels) -> np.ndarray:
        """Concept index per clip (int64 ``[B]``; :data:`NONE` for silence and, if strict, for any sound whose
        spectrum, timbre or rhythm is not its concept's) from log-mels ``[B, M, F]``."""
        if not self.strict:
            scores = self.scores(logmels)
            answer = scores.argmax(axis=1).astype(np.int64)
            answer[self._profiles(logmels).max(axis=1) < self.silence_level] = NONE
            if self.min_score is not None:
                answer[scores.max(axis=1) < self.min_score] = NONE
            return answer
        return self.hear(logmels).verdict

    def mels(self, audio, sample_rate: int = 16000) -> torch.Tensor:
        """Log-mels ``[B, M, F]`` of waveforms ``[B, samples]`` or ``[samples]``."""
        rate = self.mel_config.sample_rate
        if sample_rate != rate:
            raise ClipsonicError(f"audio at {sample_rate} Hz, but the oracle listens at {rate} Hz; resample it "
                                 f"(e.g. clipsonic.media.load_audio(path, sample_rate={rate}))")
        wav = torch.atleast_2d(torch.as_tensor(np.asarray(audio, dtype=np.float32)))
        if wav.dim() != 2 or wav.shape[1] < self.mel_config.n_fft:
            raise ClipsonicError(f"expected audio [B, samples] or [samples] with ≥ {self.mel_config.n_fft} samples, "
                                 f"got {tuple(wav.shape)}")
        return mel_spectrogram(wav, self.mel_config)

    def classify_audio(self, audio, sample_rate: int = 16000) -> np.ndarray:
        """Concept index per clip (int64 ``[B]``, or ``[1]`` for one clip ``[samples]``)."""
        return self.classify_mels(self.mels(audio, sample_rate))

    def classify(self, audio: np.ndarray, sample_rate: int) -> list[str | None]:
        """Concept name per clip of ``audio`` ``[B, samples]`` at any rate (resampled); None for no concept."""
        rate = self.mel_config.sample_rate
        audio = np.asarray(audio, dtype=np.float32)
        if sample_rate != rate:
            audio = np.stack([soxr.resample(a, sample_rate, rate) for a in audio])
        return [CONCEPT_NAMES[k] if k != NONE else None for k in self.classify_audio(audio, rate)]


def _check(logmels, n_mels: int) -> torch.Tensor:
    """Log-mels as a ``[B, M, F]`` tensor (one ``[M, F]`` gains the batch axis), or a one-line error."""
    logmels = torch.as_tensor(logmels)
    if logmels.dim() == 2:
        logmels = logmels[None]
    if logmels.dim() != 3 or logmels.shape[1] != n_mels or logmels.shape[2] == 0:
        raise ClipsonicError(f"expected log-mels [B, {n_mels}, frames], got "
                             f"{tuple(logmels.shape)}; pass clipsonic.audio.mel_spectrogram output")
    return logmels


def _standardise(profiles: np.ndarray) -> np.ndarray:
    """Zero mean, unit norm along the last axis, so a dot product is Pearson's correlation."""
    centred = profiles - profiles.mean(axis=-1, keepdims=True)
    return centred / np.maximum(np.linalg.norm(centred, axis=-1, keepdims=True), 1e-12)


def _logmels(clips: list[np.ndarray], config: MelConfig) -> torch.Tensor:
    return mel_spectrogram(torch.from_numpy(np.stack(clips)), config).double()  # [B, M, F]


@functools.lru_cache(maxsize=2)
def _templates(config: MelConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The oracle's templates, a pure function of the world (cached: every classifier shares them).

    Returns spectral ``[K, G, M]`` and timbre ``[K, Tau, G, M]`` profiles (standardised), band weights ``a``
    ``[K, M]`` (sum 1) and envelopes ``E`` ``[K, R, PHASES, WINDOW]``."""
    factors = np.exp(np.linspace(-1.0, 1.0, _GRID) * np.log1p(F0_JITTER))
    rng = np.random.default_rng(0)
    spectral = [synthesize(c.f0 * g, c.timbre, c.rhythm, _TEMPLATE_SAMPLES, rng, sample_rate=config.sample_rate,
                           jitter=False) for c in CONCEPTS for g in factors]
    spectral = _standardise(_logmels(spectral, config).mean(dim=-1).numpy()).reshape(len(CONCEPTS), _GRID, -1)
    steady = [synthesize(c.f0 * g, t, "steady", _TIMBRE_SAMPLES, rng, sample_rate=config.sample_rate, jitter=False)
              for c in CONCEPTS for t in TIMBRE_NAMES for g in factors]
    steady = _logmels(steady, config).reshape(len(CONCEPTS), len(TIMBRE_NAMES), _GRID, config.n_mels, -1)
    timbre = _standardise(steady.mean(dim=-1).numpy())  # [K, Tau, G, M]
    own = [TIMBRE_NAMES.index(c.timbre) for c in CONCEPTS]
    # a[k, m]: the linear mel magnitude of k's partials, over the f0 grid (so a jittered clip stays inside)
    weights = steady[torch.arange(len(CONCEPTS)), own].exp().mean(dim=(1, 3)).numpy()  # [K, M]
    return spectral, timbre, weights / weights.sum(axis=1, keepdims=True), _envelopes(config, weights)


def _envelopes(config: MelConfig, weights: np.ndarray) -> np.ndarray:
    """E[k, r, φ, f] (nepers): the weighted log-energy of k's sound with rhythm r, starting φ/PHASES of a period
    late, over WINDOW frames clear of the padded edges; the whole clip (noise floor included) as the world makes it."""
    hop, pad = config.hop_length, 2 * EDGE_FRAMES
    span = (WINDOW + 2 * pad) * hop
    longest = int(np.ceil(config.sample_rate / min(r for _, r in RHYTHMS.values() if r > 0)))
    out = np.zeros((len(CONCEPTS), len(RHYTHM_NAMES), PHASES, WINDOW))
    rng = np.random.default_rng(1)
    for k, c in enumerate(CONCEPTS):
        cuts = []
        for name in RHYTHM_NAMES:
            clip = synthesize(c.f0, c.timbre, name, span + longest, rng, sample_rate=config.sample_rate, jitter=False)
            period = config.sample_rate / RHYTHMS[name][1] if RHYTHMS[name][1] > 0 else 0.0  # samples
            cuts += [clip[s:s + span] for s in (np.arange(PHASES) / PHASES * period).round().astype(int)]
        logmels = _logmels(cuts, config)  # [R * P, M, WINDOW + 2 pad]
        energy = torch.logsumexp(logmels + torch.from_numpy(np.log(weights[k] / weights[k].sum()))[:, None], dim=1)
        out[k] = energy[:, pad:pad + WINDOW].numpy().reshape(len(RHYTHM_NAMES), PHASES, WINDOW)
    return out
