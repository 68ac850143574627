"""Fréchet distance, streaming statistics and CLAP score against closed forms and SciPy."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from clipsonic.metrics import (
    EmbeddingStats,
    MetricError,
    clap_score,
    cosine_similarities,
    fad_from_stats,
    frechet_distance,
    trace_sqrt_product,
)


def _random_cov(rng: np.random.Generator, dim: int, n: int | None = None) -> np.ndarray:
    a = rng.normal(size=(n or 2 * dim, dim))
    return np.cov(a, rowvar=False)


def _scipy_fd(mu1, s1, mu2, s2) -> float:
    """The textbook computation: general matrix square root of the product (SciPy)."""
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    covmean = np.real(covmean)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def test_one_dimensional_closed_form():
    # N(m1, s1²) vs N(m2, s2²): FD = (m1 - m2)² + (s1 - s2)²
    fd = frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([-2.0]), np.array([[9.0]]))
    assert fd == pytest.approx((1 + 2) ** 2 + (2 - 3) ** 2)


def test_diagonal_closed_form():
    # Diagonal covariances commute: FD = ‖μ₁−μ₂‖² + Σ (√aᵢ − √bᵢ)²
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0.1, 3, size=8), rng.uniform(0.1, 3, size=8)
    mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)


def test_rotated_commuting_closed_form():
    # Σ₁ = Q diag(a) Qᵀ, Σ₂ = Q diag(b) Qᵀ share eigenvectors: same closed form as the diagonal case.
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    a, b = rng.uniform(0.5, 2, size=6), rng.uniform(0.5, 2, size=6)
    s1, s2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
    mu = rng.normal(size=6)
    expected = np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu, s1, mu, s2) == pytest.approx(expected, rel=1e-9)


def test_zero_for_identical_and_symmetric():
    rng = np.random.default_rng(2)
    s1, s2 = _random_cov(rng, 10), _random_cov(rng, 10)
    m1, m2 = rng.normal(size=10), rng.normal(size=10)
    assert frechet_distance(m1, s1, m1, s1) == pytest.approx(0.0, abs=1e-9)
    assert frechet_distance(m1, s1, m2, s2) == pytest.approx(frechet_distance(m2, s2, m1, s1), rel=1e-10)
    assert frechet_distance(m1, s1, m2, s2) > 0


def test_matches_scipy_on_random_data():
    rng = np.random.default_rng(3)
    for dim in (3, 16, 64):
        x = rng.normal(size=(4 * dim, dim))
        y = rng.normal(loc=0.3, scale=1.5, size=(4 * dim, dim)) @ rng.normal(size=(dim, dim)) / np.sqrt(dim)
        m1, s1 = x.mean(0), np.cov(x, rowvar=False)
        m2, s2 = y.mean(0), np.cov(y, rowvar=False)
        assert frechet_distance(m1, s1, m2, s2) == pytest.approx(_scipy_fd(m1, s1, m2, s2), rel=1e-6)


def test_rank_deficient_covariances_stay_finite():
    rng = np.random.default_rng(4)
    s1 = _random_cov(rng, 32, n=5)  # rank 4
    s2 = _random_cov(rng, 32, n=6)
    fd = frechet_distance(np.zeros(32), s1, np.zeros(32), s2)
    assert np.isfinite(fd) and fd > 0
    assert fd == pytest.approx(_scipy_fd(np.zeros(32), s1, np.zeros(32), s2), rel=1e-4)


def test_trace_sqrt_product_identity():
    # tr((Σ Σ)^{1/2}) = tr Σ for PSD Σ
    rng = np.random.default_rng(5)
    s = _random_cov(rng, 12)
    assert trace_sqrt_product(s, s) == pytest.approx(np.trace(s), rel=1e-10)


def test_bad_inputs_are_refused():
    eye = np.eye(3)
    with pytest.raises(MetricError, match="negative eigenvalue"):
        frechet_distance(np.zeros(3), eye, np.zeros(3), -eye)
    with pytest.raises(MetricError, match="symmetric"):
        frechet_distance(np.zeros(3), np.triu(np.ones((3, 3))), np.zeros(3), eye)
    with pytest.raises(MetricError, match="NaN"):
        frechet_distance(np.array([np.nan, 0, 0]), eye, np.zeros(3), eye)
    with pytest.raises(MetricError, match=r"\[3, 3\]"):
        frechet_distance(np.zeros(3), np.eye(2), np.zeros(3), eye)


def test_streaming_stats_equal_one_shot():
    rng = np.random.default_rng(6)
    x = rng.normal(loc=5.0, size=(257, 7)) * rng.uniform(0.1, 10, size=7)
    stats = EmbeddingStats(dim=7)
    for part in np.array_split(x, [1, 2, 50, 51, 200]):  # uneven files, one of a single frame
        stats.update(part)
    assert stats.count == 257
    np.testing.assert_allclose(stats.mean, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats.covariance, np.cov(x, rowvar=False), rtol=1e-10)


def test_merge_matches_update_and_roundtrips(tmp_path):
    rng = np.random.default_rng(7)
    x, y = rng.normal(size=(40, 5)), rng.normal(loc=2.0, size=(13, 5))
    merged = EmbeddingStats.from_embeddings(x).merge(EmbeddingStats.from_embeddings(y))
    both = np.concatenate([x, y])
    np.testing.assert_allclose(merged.covariance, np.cov(both, rowvar=False), rtol=1e-10)
    merged.save(tmp_path / "s.npz")
    loaded = EmbeddingStats.load(tmp_path / "s.npz")
    assert loaded.count == 53
    np.testing.assert_array_equal(loaded.m2, merged.m2)


def test_stats_refuse_nan_wrong_dim_and_warn_on_few(caplog):
    stats = EmbeddingStats(dim=4)
    with pytest.raises(MetricError, match="NaN"):
        stats.update(np.full((2, 4), np.nan))
    with pytest.raises(MetricError, match="4-d"):
        stats.update(np.zeros((2, 3)))
    one = EmbeddingStats.from_embeddings(np.ones((1, 4)))
    with pytest.raises(MetricError, match="at least 2"):
        fad_from_stats(one, one)
    few = EmbeddingStats.from_embeddings(np.random.default_rng(0).normal(size=(3, 4)))
    assert "rank-deficient" in few.problems()[0]
    with caplog.at_level("WARNING"):
        assert fad_from_stats(few, few) == pytest.approx(0.0, abs=1e-9)
    assert "rank-deficient" in caplog.text


def test_fad_from_stats_matches_frechet_distance():
    rng = np.random.default_rng(8)
    x, y = rng.normal(size=(50, 6)), rng.normal(loc=1.0, size=(60, 6))
    expected = frechet_distance(x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False))
    assert fad_from_stats(EmbeddingStats.from_embeddings(x), EmbeddingStats.from_embeddings(y)) == pytest.approx(expected)


def test_clap_score_is_mean_paired_cosine():
    text = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]])
    audio = np.array([[1.0, 1.0], [0.0, -5.0], [3.0, 4.0]])
    expected = np.mean([1 / np.sqrt(2), -1.0, 1.0])
    assert clap_score(text, audio) == pytest.approx(expected)
    np.testing.assert_allclose(cosine_similarities(text, audio), [1 / np.sqrt(2), -1, 1])
    with pytest.raises(MetricError, match="paired"):
        clap_score(text, audio[:2])
    with pytest.raises(MetricError, match="zeros"):
        clap_score(np.zeros((1, 2)), np.ones((1, 2)))
