"""The paper's two numbers: Fréchet (audio) distance and CLAP score, as small pure functions.

- FAD (Kilgour et al. 2019): fit a Gaussian to the embeddings of real audio and one to those of
  generated audio (frames pooled over all files), then
  ``FD = ‖μ₁ − μ₂‖² + tr(Σ₁ + Σ₂ − 2 (Σ₁ Σ₂)^{1/2})``.
- CLAP score: the mean cosine similarity between the CLAP text embedding of each query and the
  CLAP audio embedding of the audio generated for it.

The statistics are accumulated in one pass over files of any size (:class:`EmbeddingStats`) with
Chan et al.'s pairwise update, so they equal the one-shot mean and covariance however the
frames are split.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import numpy as np

from clipsonic.errors import ClipsonicError

log = logging.getLogger(__name__)


class MetricError(ClipsonicError, ValueError):
    """Statistics or embeddings that no metric can be computed from (empty, mismatched, NaN)."""


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """``tr((Σ₁ Σ₂)^{1/2})`` for symmetric positive semi-definite ``Σ₁, Σ₂`` ``[D, D]``.

    Σ₁Σ₂ is similar to the symmetric PSD matrix ``M = Σ₁^{1/2} Σ₂ Σ₁^{1/2}``, so both have the same
    (real, non-negative) eigenvalues λᵢ and the trace is Σ √λᵢ. Working with ``M`` and ``eigh``
    avoids the general matrix square root (whose SciPy implementation was wrong in some releases)
    and complex arithmetic. Eigenvalues below zero by more than rounding mean an input is not a
    covariance matrix: that raises instead of being clipped away.
    """
    s1 = _symmetric(sigma1, "sigma1")
    s2 = _symmetric(sigma2, "sigma2")
    root1 = _psd_sqrt(s1, "sigma1")
    m = root1 @ s2 @ root1
    eig = np.linalg.eigvalsh((m + m.T) / 2)
    scale = max(float(np.abs(eig).max(initial=0.0)), 1e-300)
    if eig.min(initial=0.0) < -1e-6 * scale:
        raise MetricError(
            f"sigma1^1/2 sigma2 sigma1^1/2 has a negative eigenvalue {eig.min():.3g} (largest {scale:.3g}): "
            "sigma2 is not positive semi-definite"
        )
    return float(np.sqrt(np.clip(eig, 0.0, None)).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """Fréchet distance between ``N(μ₁, Σ₁)`` and ``N(μ₂, Σ₂)``: ``‖μ₁−μ₂‖² + tr(Σ₁+Σ₂−2(Σ₁Σ₂)^{1/2})``.

    Args:
        mu1, mu2: means ``[D]``.
        sigma1, sigma2: covariances ``[D, D]``.
        eps: added to both diagonals (``Σ + εI``) for a retry when the first computation is not
            finite (a near-singular covariance); the retry is logged.

    Computed in float64. The result is clamped at 0 (rounding can give −1e-12 for equal inputs).
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    dim = mu1.shape[0]
    if mu1.shape != mu2.shape or mu1.ndim != 1:
        raise MetricError(f"means must both be [D]: got {mu1.shape} and {mu2.shape}")
    if sigma1.shape != (dim, dim) or sigma2.shape != (dim, dim):
        raise MetricError(f"covariances must be [{dim}, {dim}]: got {sigma1.shape} and {sigma2.shape}")
    for name, a in (("mu1", mu1), ("mu2", mu2), ("sigma1", sigma1), ("sigma2", sigma2)):
        if not np.all(np.isfinite(a)):
            raise MetricError(f"{name} contains NaN or infinity (were the embeddings of NaN audio?)")
    diff = mu1 - mu2
    try:
        tr_covmean = trace_sqrt_product(sigma1, sigma2)
    except np.linalg.LinAlgError:
        tr_covmean = float("nan")
    if not np.isfinite(tr_covmean):
        log.warning("Fréchet distance: product of covariances is singular; adding %g to the diagonals", eps)
        offset = eps * np.eye(dim)
        sigma1, sigma2 = sigma1 + offset, sigma2 + offset
        tr_covmean = trace_sqrt_product(sigma1, sigma2)
    value = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)
    return max(value, 0.0)


def _symmetric(a: np.ndarray, name: str) -> np.ndarray:
    scale = max(float(np.abs(a).max(initial=0.0)), 1e-300)
    if np.abs(a - a.T).max(initial=0.0) > 1e-6 * scale:
        raise MetricError(f"{name} is not symmetric: not a covariance matrix")
    return (a + a.T) / 2


def _psd_sqrt(a: np.ndarray, name: str) -> np.ndarray:
    """Symmetric square root of a PSD matrix by eigen-decomposition."""
    eig, vec = np.linalg.eigh(a)
    scale = max(float(np.abs(eig).max(initial=0.0)), 1e-300)
    if eig.min(initial=0.0) < -1e-6 * scale:
        raise MetricError(f"{name} has a negative eigenvalue {eig.min():.3g}: not positive semi-definite")
    return (vec * np.sqrt(np.clip(eig, 0.0, None))) @ vec.T


@dataclasses.dataclass
class EmbeddingStats:
    """Running mean and scatter of embedding frames ``[N, D]``, mergeable across files and processes.

    ``m2`` is the scatter matrix Σᵢ (xᵢ − x̄)(xᵢ − x̄)ᵀ; :attr:`covariance` divides it by ``count − 1``
    (the unbiased estimate, as ``np.cov`` and the reference FAD code).
    """

    dim: int
    count: int = 0
    mean: np.ndarray | None = None  # [D] float64
    m2: np.ndarray | None = None  # [D, D] float64

    def __post_init__(self) -> None:
        if self.mean is None:
            self.mean = np.zeros(self.dim)
        if self.m2 is None:
            self.m2 = np.zeros((self.dim, self.dim))

    @classmethod
    def from_embeddings(cls, embeddings: np.ndarray) -> EmbeddingStats:
        embeddings = _as_frames(embeddings)
        stats = cls(dim=embeddings.shape[1])
        stats.update(embeddings)
        return stats

    def update(self, embeddings: np.ndarray) -> EmbeddingStats:
        """Add frames ``[N, D]`` (or one ``[D]``); returns self."""
        x = _as_frames(embeddings)
        if x.shape[1] != self.dim:
            raise MetricError(f"embeddings are {x.shape[1]}-d but these statistics are {self.dim}-d")
        if not np.all(np.isfinite(x)):
            raise MetricError("embeddings contain NaN or infinity (was the audio NaN?)")
        if len(x) == 0:
            return self
        mean = x.mean(axis=0)
        centred = x - mean
        return self.merge(EmbeddingStats(self.dim, len(x), mean, centred.T @ centred))

    def merge(self, other: EmbeddingStats) -> EmbeddingStats:
        """Combine with another set in place (Chan, Golub & LeVeque 1979 pairwise update); returns self."""
        if other.dim != self.dim:
            raise MetricError(f"cannot merge {other.dim}-d statistics into {self.dim}-d ones")
        if other.count == 0:
            return self
        n = self.count + other.count
        delta = other.mean - self.mean
        self.m2 = self.m2 + other.m2 + np.outer(delta, delta) * (self.count * other.count / n)
        self.mean = self.mean + delta * (other.count / n)
        self.count = n
        return self

    @property
    def covariance(self) -> np.ndarray:
        if self.count < 2:
            raise MetricError(f"a covariance needs at least 2 embeddings, got {self.count}")
        return self.m2 / (self.count - 1)

    def problems(self) -> list[str]:
        """Human-readable reasons these statistics make a weak FAD (empty list when fine)."""
        if self.count < 2:
            return [f"only {self.count} embedding(s): FAD needs at least 2"]
        if self.count <= self.dim:
            return [
                f"{self.count} embeddings for {self.dim} dimensions: the covariance is rank-deficient "
                "and the FAD is biased; use more clips"
            ]
        return []

    def save(self, path: str | os.PathLike) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, dim=self.dim, count=self.count, mean=self.mean, m2=self.m2)

    @classmethod
    def load(cls, path: str | os.PathLike) -> EmbeddingStats:
        with np.load(path, allow_pickle=False) as data:
            return cls(int(data["dim"]), int(data["count"]), data["mean"].copy(), data["m2"].copy())


def _as_frames(embeddings: np.ndarray) -> np.ndarray:
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2:
        raise MetricError(f"expected embeddings [N, D], got shape {x.shape}")
    return x


def fad_from_stats(reference: EmbeddingStats, generated: EmbeddingStats, warn: bool = True) -> float:
    """FAD between two sets of statistics; raises when either has fewer than 2 embeddings.

    ``warn``: log :meth:`EmbeddingStats.problems` (callers that report them otherwise pass False).
    """
    if reference.dim != generated.dim:
        raise MetricError(f"reference embeddings are {reference.dim}-d but generated ones {generated.dim}-d")
    for name, stats in (("reference", reference), ("generated", generated)):
        if stats.count < 2:
            raise MetricError(f"the {name} set has {stats.count} embedding(s); FAD needs at least 2")
        for problem in stats.problems() if warn else ():
            log.warning("FAD %s set: %s", name, problem)
    return frechet_distance(reference.mean, reference.covariance, generated.mean, generated.covariance)


def cosine_similarities(text_emb: np.ndarray, audio_emb: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of paired embeddings ``[B, D]`` × ``[B, D]`` → ``[B]``."""
    t = np.asarray(text_emb, np.float64)
    a = np.asarray(audio_emb, np.float64)
    if t.ndim == 1:
        t, a = t[None], np.atleast_2d(a)
    if t.shape != a.shape or t.ndim != 2:
        raise MetricError(f"text and audio embeddings must be paired [B, D]: got {t.shape} and {a.shape}")
    if not (np.all(np.isfinite(t)) and np.all(np.isfinite(a))):
        raise MetricError("CLAP embeddings contain NaN or infinity")
    tn = np.linalg.norm(t, axis=1)
    an = np.linalg.norm(a, axis=1)
    if np.any(tn == 0) or np.any(an == 0):
        raise MetricError("a CLAP embedding is all zeros: cosine similarity undefined")
    return (t * a).sum(axis=1) / (tn * an)


def clap_score(text_emb: np.ndarray, audio_emb: np.ndarray) -> float:
    """Mean cosine similarity between paired CLAP text and audio embeddings ``[B, D]``.

    Score every generated sample: reranking by CLAP before reporting this inflates it.
    """
    sims = cosine_similarities(text_emb, audio_emb)
    if len(sims) == 0:
        raise MetricError("CLAP score of an empty set")
    return float(sims.mean())
