"""Rank statistics shared by the explainer's sanity check and the aggregator's
comparisons of maps."""

from __future__ import annotations

import numpy as np


def rank_correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman's rank correlation of each row of ``a`` with the same row of ``b``
    (ties get their average rank); 0 where either row is constant."""
    ranks_a, ranks_b = _average_ranks(a), _average_ranks(b)
    ranks_a -= ranks_a.mean(axis=1, keepdims=True)
    ranks_b -= ranks_b.mean(axis=1, keepdims=True)
    scale = np.sqrt((ranks_a**2).sum(axis=1) * (ranks_b**2).sum(axis=1))
    covariance = (ranks_a * ranks_b).sum(axis=1)
    return np.divide(covariance, scale, out=np.zeros_like(covariance), where=scale > 0)


def _average_ranks(rows: np.ndarray) -> np.ndarray:
    ranks = np.empty(rows.shape, dtype=np.float64)
    for i, row in enumerate(rows):
        _, inverse, counts = np.unique(row, return_inverse=True, return_counts=True)
        ends = np.cumsum(counts)
        ranks[i] = (ends - (counts - 1) / 2.0)[inverse]
    return ranks
