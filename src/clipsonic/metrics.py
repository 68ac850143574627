"""The paper's two numbers as small pure functions: Fréchet (audio) distance and CLAP score.

- FAD (Kilgour et al. 2019): Gaussians fitted to the (pooled) embedding frames of real and of generated
  audio, ``FD = ‖μ₁ − μ₂‖² + tr(Σ₁ + Σ₂ − 2 (Σ₁ Σ₂)^{1/2})``.
- CLAP score: the mean cosine between the CLAP embeddings of each query text and of its audio.
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
    """``tr((Σ₁ Σ₂)^{1/2})`` for symmetric PSD ``Σ₁, Σ₂`` ``[D, D]``: Σ₁Σ₂ is similar to the symmetric PSD
    ``M = Σ₁^{1/2} Σ₂ Σ₁^{1/2}``, so the trace is Σ √λᵢ over M's eigenvalues (``eigh``: no general matrix square
    root, wrong in some SciPy releases, no complex numbers). An eigenvalue below zero beyond rounding raises."""
    eig1, vec1 = np.linalg.eigh(_symmetric(sigma1, "sigma1"))
    root1 = (vec1 * np.sqrt(_nonnegative(eig1, "sigma1"))) @ vec1.T
    m = root1 @ _symmetric(sigma2, "sigma2") @ root1
    eig = _nonnegative(np.linalg.eigvalsh((m + m.T) / 2), "sigma2 (as sigma1^1/2 sigma2 sigma1^1/2)")
    return float(np.sqrt(eig).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """Fréchet distance between ``N(μ₁, Σ₁)`` and ``N(μ₂, Σ₂)`` (means ``[D]``, covariances ``[D, D]``), in float64;
    near-singular covariances retry with ``εI`` added (warned); clamped at 0 (rounding gives −1e-12 for equals)."""
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
    try:
        tr_covmean = trace_sqrt_product(sigma1, sigma2)
    except np.linalg.LinAlgError:
        tr_covmean = float("nan")
    if not np.isfinite(tr_covmean):
        log.warning("Fréchet distance: product of covariances is singular; adding %g to the diagonals", eps)
        sigma1, sigma2 = sigma1 + eps * np.eye(dim), sigma2 + eps * np.eye(dim)
        tr_covmean = trace_sqrt_product(sigma1, sigma2)
    diff = mu1 - mu2
    return max(float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean), 0.0)


def _symmetric(a: np.ndarray, name: str) -> np.ndarray:
    if np.abs(a - a.T).max(initial=0.0) > 1e-6 * max(float(np.abs(a).max(initial=0.0)), 1e-300):
        raise MetricError(f"{name} is not symmetric: not a covariance matrix")
    return (a + a.T) / 2


def _nonnegative(eig: np.ndarray, name: str) -> np.ndarray:
    if eig.min(initial=0.0) < -1e-6 * max(float(np.abs(eig).max(initial=0.0)), 1e-300):
        raise MetricError(f"{name} has a negative eigenvalue {eig.min():.3g} (largest {eig.max():.3g}): "
                          "not positive semi-definite")
    return np.clip(eig, 0.0, None)


@dataclasses.dataclass
class EmbeddingStats:
    """Running mean and scatter ``m2 = Σᵢ (xᵢ − x̄)(xᵢ − x̄)ᵀ`` of embedding frames ``[N, D]``, mergeable
    across files and processes; :attr:`covariance` is the unbiased ``m2 / (count − 1)``, as ``np.cov``."""

    dim: int
    count: int = 0
    mean: np.ndarray | None = None  # [D] float64
    m2: np.ndarray | None = None  # [D, D] float64

    def __post_init__(self) -> None:
        self.mean = np.zeros(self.dim) if self.mean is None else self.mean
        self.m2 = np.zeros((self.dim, self.dim)) if self.m2 is None else self.m2

    @classmethod
    def from_embeddings(cls, embeddings: np.ndarray) -> EmbeddingStats:
        return cls(dim=_as_frames(embeddings).shape[1]).update(embeddings)

    def update(self, embeddings: np.ndarray) -> EmbeddingStats:
        """Add frames ``[N, D]`` (or one ``[D]``); returns self."""
        x = _as_frames(embeddings)
        if x.shape[1] != self.dim:
            raise MetricError(f"embeddings are {x.shape[1]}-d but these statistics are {self.dim}-d")
        if not np.all(np.isfinite(x)):
            raise MetricError("embeddings contain NaN or infinity (was the audio NaN?)")
        if len(x) == 0:
            return self
        centred = x - x.mean(axis=0)
        return self.merge(EmbeddingStats(self.dim, len(x), x.mean(axis=0), centred.T @ centred))

    def merge(self, other: EmbeddingStats) -> EmbeddingStats:
        """Combine with another set in place (Chan, Golub & LeVeque 1979 pairwise update); returns self."""
        if other.dim != self.dim:
            raise MetricError(f"cannot merge {other.dim}-d statistics into {self.dim}-d ones")
        if other.count:
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
        """Why these statistics make a weak FAD (empty when fine)."""
        if self.count < 2:
            return [f"only {self.count} embedding(s): FAD needs at least 2"]
        if self.count <= self.dim:
            return [f"{self.count} embeddings for {self.dim} dimensions: the covariance is rank-deficient "
                    "and the FAD is biased; use more clips"]
        return []

    def save(self, path: str | os.PathLike) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, dim=self.dim, count=self.count, mean=self.mean, m2=self.m2)

    @classmethod
    def load(cls, path: str | os.PathLike) -> EmbeddingStats:
        with np.load(path, allow_pickle=False) as data:
            return cls(int(data["dim"]), int(data["count"]), data["mean"].copy(), data["m2"].copy())


def _as_frames(embeddings: np.ndarray) -> np.ndarray:
    x = np.asarray(embeddings, dtype=np.float64)
    x = x[None] if x.ndim == 1 else x
    if x.ndim != 2:
        raise MetricError(f"expected embeddings [N, D], got shape {x.shape}")
    return x


def fad_from_stats(reference: EmbeddingStats, generated: EmbeddingStats, warn: bool = True) -> float:
    """FAD between two sets of statistics; ``warn``: log their :meth:`~EmbeddingStats.problems`."""
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
    t, a = np.atleast_2d(np.asarray(text_emb, np.float64)), np.atleast_2d(np.asarray(audio_emb, np.float64))
    if t.shape != a.shape or t.ndim != 2:
        raise MetricError(f"text and audio embeddings must be paired [B, D]: got {t.shape} and {a.shape}")
    if not (np.all(np.isfinite(t)) and np.all(np.isfinite(a))):
        raise MetricError("CLAP embeddings contain NaN or infinity")
    norms = np.linalg.norm(t, axis=1) * np.linalg.norm(a, axis=1)
    if np.any(norms == 0):
        raise MetricError("a CLAP embedding is all zeros: cosine similarity undefined")
    return (t * a).sum(axis=1) / norms


def clap_score(text_emb: np.ndarray, audio_emb: np.ndarray) -> float:
    """Mean cosine between paired CLAP text and audio embeddings ``[B, D]`` (score every generated sample:
    reranking by CLAP first inflates it)."""
    sims = cosine_similarities(text_emb, audio_emb)
    if len(sims) == 0:
        raise MetricError("CLAP score of an empty set")
    return float(sims.mean())
