"""An exact judge of SonicWorld sounds: which concept made this clip? A matched filter on the spectrum.

A clip's time-averaged log-mel profile ``p[m]`` is compared with templates ``T[k, g, m]``: concept
k synthesised with its f0 scaled by each factor g of a grid spanning the ±3 % jitter,

    score[k] = max_g corr(p, T[k, g])   (Pearson: blind to gain and vocoder scaling).

The concepts' fundamentals are ≥ 1.4× apart, so the right template wins by a wide margin. Answers
are concept indices, or :data:`NONE` (-1) for silence (loudest band below white noise at
:data:`SILENCE_DBFS`); white noise gets the best-correlating concept unless ``min_score`` is set.
"""

from __future__ import annotations

import numpy as np
import soxr
import torch

from clipsonic.audio import MelConfig, mel_spectrogram
from clipsonic.errors import ClipsonicError
from clipsonic.sonicworld.sounds import F0_JITTER, synthesize
from clipsonic.sonicworld.world import CONCEPT_NAMES, CONCEPTS

NONE = -1  # the answer for silence (and, with ``min_score``, for sounds like no concept)
SILENCE_DBFS = -60.0
_TEMPLATE_SAMPLES = 32768  # 2.048 s: every rhythm completes several periods
_GRID = 7  # f0 factors across ±F0_JITTER, so no clip is more than ~0.5 % from a template


class OracleClassifier:
    """Matched-filter classifier of SonicWorld sounds; :meth:`classify` is the relevance classifier of evaluate.

    Args:
        mel_config: the log-mel front end; default :class:`clipsonic.audio.MelConfig` (16 kHz,
            64 bands, hop 512), the one the diffusion model generates.
        min_score: if given, clips whose best score is below it are answered :data:`NONE`.
    """

    name = "sonicworld"
    labels = CONCEPT_NAMES

    def __init__(self, mel_config: MelConfig | None = None, min_score: float | None = None) -> None:
        self.mel_config = mel_config or MelConfig()
        self.min_score = min_score
        factors = np.exp(np.linspace(-1.0, 1.0, _GRID) * np.log1p(F0_JITTER))
        rng = np.random.default_rng(0)
        clips = [synthesize(c.f0 * g, c.timbre, c.rhythm, _TEMPLATE_SAMPLES, rng,
                            sample_rate=self.mel_config.sample_rate, jitter=False)
                 for c in CONCEPTS for g in factors]
        profiles = self._profiles(mel_spectrogram(torch.from_numpy(np.stack(clips)), self.mel_config))
        self.templates = _standardise(profiles).reshape(len(CONCEPTS), _GRID, -1)  # [K, G, M]
        quiet = rng.standard_normal(_TEMPLATE_SAMPLES).astype(np.float32) * 10 ** (SILENCE_DBFS / 20)
        self.silence_level = float(self._profiles(mel_spectrogram(torch.from_numpy(quiet)[None],
                                                                  self.mel_config)).max())

    @staticmethod
    def _profiles(logmels) -> np.ndarray:
        """Time-averaged log-mel ``[B, M, F]`` → ``[B, M]`` (float64)."""
        return torch.as_tensor(logmels).double().mean(dim=-1).cpu().numpy()

    def _check_mels(self, logmels) -> torch.Tensor:
        logmels = torch.as_tensor(logmels)
        if logmels.dim() == 2:
            logmels = logmels[None]
        if logmels.dim() != 3 or logmels.shape[1] != self.mel_config.n_mels or logmels.shape[2] == 0:
            raise ClipsonicError(f"expected log-mels [B, {self.mel_config.n_mels}, frames], got "
                              f"{tuple(logmels.shape)}; pass clipsonic.audio.mel_spectrogram output")
        return logmels

    def scores(self, logmels) -> np.ndarray:
        """Correlation of each clip with each concept ``[B, K]`` (in [-1, 1]) from log-mels ``[B, M, F]``."""
        profiles = _standardise(self._profiles(self._check_mels(logmels)))  # [B, M]
        corr = np.einsum("bm,kgm->bkg", profiles, self.templates)
        return corr.max(axis=-1)

    def classify_mels(self, logmels) -> np.ndarray:
        """Concept index per clip (int64 ``[B]``; :data:`NONE` for silence) from log-mels ``[B, M, F]``."""
        logmels = self._check_mels(logmels)
        scores = self.scores(logmels)
        answer = scores.argmax(axis=1).astype(np.int64)
        silent = self._profiles(logmels).max(axis=1) < self.silence_level
        answer[silent] = NONE
        if self.min_score is not None:
            answer[scores.max(axis=1) < self.min_score] = NONE
        return answer

    def mels(self, audio, sample_rate: int = 16000) -> torch.Tensor:
        """Log-mels ``[B, M, F]`` of waveforms ``[B, samples]`` or ``[samples]``."""
        if sample_rate != self.mel_config.sample_rate:
            raise ClipsonicError(f"audio at {sample_rate} Hz, but the oracle listens at {self.mel_config.sample_rate} Hz; "
                              f"resample it (e.g. clipsonic.media.load_audio(path, sample_rate="
                              f"{self.mel_config.sample_rate}))")
        wav = torch.as_tensor(np.asarray(audio, dtype=np.float32))
        if wav.dim() == 1:
            wav = wav[None]
        if wav.dim() != 2 or wav.shape[1] < self.mel_config.n_fft:
            raise ClipsonicError(f"expected audio [B, samples] or [samples] with ≥ {self.mel_config.n_fft} samples, "
                              f"got {tuple(wav.shape)}")
        return mel_spectrogram(wav, self.mel_config)

    def classify_audio(self, audio, sample_rate: int = 16000) -> np.ndarray:
        """Concept index per clip (int64 ``[B]``, or ``[1]`` for one clip ``[samples]``)."""
        return self.classify_mels(self.mels(audio, sample_rate))

    def classify(self, audio: np.ndarray, sample_rate: int) -> list[str | None]:
        """Concept name per clip of ``audio`` ``[B, samples]`` at any rate (resampled); None for silence."""
        audio = np.asarray(audio, dtype=np.float32)
        if sample_rate != self.mel_config.sample_rate:
            audio = np.stack([soxr.resample(a, sample_rate, self.mel_config.sample_rate) for a in audio])
        return [CONCEPT_NAMES[k] if k != NONE else None for k in self.classify_audio(audio, self.mel_config.sample_rate)]

    def accuracy(self, logmels, labels) -> float:
        """Fraction of clips judged as ``labels`` (concept indices ``[B]``)."""
        answer = self.classify_mels(logmels)
        return float(np.mean(answer == np.asarray(labels)))


def _standardise(profiles: np.ndarray) -> np.ndarray:
    """Zero mean, unit norm along the last axis, so a dot product is Pearson's correlation."""
    centred = profiles - profiles.mean(axis=-1, keepdims=True)
    return centred / np.maximum(np.linalg.norm(centred, axis=-1, keepdims=True), 1e-12)
