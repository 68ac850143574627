"""An exact judge of SonicWorld sounds: which concept made this clip? A matched filter on the spectrum.

A clip's time-averaged log-mel profile ``p[m]`` is compared with templates ``T[k, g, m]``: concept
k synthesised with its f0 scaled by each factor g of a grid spanning the ±3 % jitter,

    score[k] = max_g corr(p, T[k, g])   (Pearson: blind to gain and vocoder scaling).

The fundamentals are ≥ 1.4× apart, so the right template wins by a wide margin. Silence (loudest
band below white noise at :data:`SILENCE_DBFS`) gets :data:`NONE`, as does, with ``min_score``, noise.
"""

from __future__ import annotations

import numpy as np
import soxr
import torch

from clipsonic.audio import MelConfig, mel_spectrogram
from clipsonic.errors import ClipsonicError
from clipsonic.sonicworld.world import CONCEPT_NAMES, CONCEPTS, F0_JITTER, synthesize

NONE = -1  # the answer for silence (and, with ``min_score``, for sounds like no concept)
SILENCE_DBFS = -60.0
_TEMPLATE_SAMPLES = 32768  # 2.048 s: every rhythm completes several periods
_GRID = 7  # f0 factors across ±F0_JITTER, so no clip is more than ~0.5 % from a template


class OracleClassifier:
    """Matched-filter classifier of SonicWorld sounds on the default :class:`MelConfig` (the diffusion model's);
    :meth:`classify` is the relevance classifier of evaluate. Clips scoring below ``min_score`` get :data:`NONE`."""

    name = "sonicworld"
    labels = CONCEPT_NAMES

    def __init__(self, min_score: float | None = None) -> None:
        self.mel_config = MelConfig()
        self.min_score = min_score
        factors = np.exp(np.linspace(-1.0, 1.0, _GRID) * np.log1p(F0_JITTER))
        rng = np.random.default_rng(0)
        clips = [synthesize(c.f0 * g, c.timbre, c.rhythm, _TEMPLATE_SAMPLES, rng,
                            sample_rate=self.mel_config.sample_rate, jitter=False)
                 for c in CONCEPTS for g in factors]
        profiles = self._profiles(self.mels(np.stack(clips), self.mel_config.sample_rate))
        self.templates = _standardise(profiles).reshape(len(CONCEPTS), _GRID, -1)  # [K, G, M]
        quiet = rng.standard_normal(_TEMPLATE_SAMPLES).astype(np.float32) * 10 ** (SILENCE_DBFS / 20)
        self.silence_level = float(self._profiles(self.mels(quiet, self.mel_config.sample_rate)).max())

    def _profiles(self, logmels) -> np.ndarray:
        """Time-averaged log-mels ``[B, M, F]`` (or one ``[M, F]``) → ``[B, M]`` (float64)."""
        logmels = torch.as_tensor(logmels)
        if logmels.dim() == 2:
            logmels = logmels[None]
        if logmels.dim() != 3 or logmels.shape[1] != self.mel_config.n_mels or logmels.shape[2] == 0:
            raise ClipsonicError(f"expected log-mels [B, {self.mel_config.n_mels}, frames], got "
                                 f"{tuple(logmels.shape)}; pass clipsonic.audio.mel_spectrogram output")
        return logmels.double().mean(dim=-1).cpu().numpy()

    def scores(self, logmels) -> np.ndarray:
        """Correlation of each clip with each concept ``[B, K]`` (in [-1, 1]) from log-mels ``[B, M, F]``."""
        corr = np.einsum("bm,kgm->bkg", _standardise(self._profiles(logmels)), self.templates)
        return corr.max(axis=-1)

    def classify_mels(self, logmels) -> np.ndarray:
        """Concept index per clip (int64 ``[B]``; :data:`NONE` for silence) from log-mels ``[B, M, F]``."""
        scores = self.scores(logmels)
        answer = scores.argmax(axis=1).astype(np.int64)
        answer[self._profiles(logmels).max(axis=1) < self.silence_level] = NONE
        if self.min_score is not None:
            answer[scores.max(axis=1) < self.min_score] = NONE
        return answer

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
        """Concept name per clip of ``audio`` ``[B, samples]`` at any rate (resampled); None for silence."""
        rate = self.mel_config.sample_rate
        audio = np.asarray(audio, dtype=np.float32)
        if sample_rate != rate:
            audio = np.stack([soxr.resample(a, sample_rate, rate) for a in audio])
        return [CONCEPT_NAMES[k] if k != NONE else None for k in self.classify_audio(audio, rate)]


def _standardise(profiles: np.ndarray) -> np.ndarray:
    """Zero mean, unit norm along the last axis, so a dot product is Pearson's correlation."""
    centred = profiles - profiles.mean(axis=-1, keepdims=True)
    return centred / np.maximum(np.linalg.norm(centred, axis=-1, keepdims=True), 1e-12)
