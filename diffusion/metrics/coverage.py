"""Diversity of a sample set in a feature space: recall (Kynkaanniemi et al. 2019) and
coverage (Naeem et al. 2020), both with k-nearest-neighbour balls.

* **recall**: the fraction of real points inside the generated set's manifold, the union
  of balls around each generated point with radius its distance to its k-th nearest
  generated neighbour. A mode-collapsed set covers few real points.
* **coverage**: the fraction of real points whose own k-NN ball (radius: distance to the
  k-th nearest *real* neighbour) holds at least one generated point. Robust to outliers
  in the generated set, which inflate recall's balls.

Both lie in ``[0, 1]``; a set drawn from the real distribution scores high on both
(coverage about ``1 - 2^-k`` for equal set sizes).
"""

from __future__ import annotations

import numpy as np


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``[N, M]`` squared Euclidean distances between rows of ``a [N, D]`` and ``b [M, D]`` (float64)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.maximum(d, 0.0)


def _kth_radius(points: np.ndarray, k: int) -> np.ndarray:
    """``[N]`` squared distance of each point to its k-th nearest other point of the set."""
    d = _sq_dists(points, points)
    np.fill_diagonal(d, np.inf)
    return np.partition(d, k - 1, axis=1)[:, k - 1]


def recall_coverage(real: np.ndarray, fake: np.ndarray, k: int = 5) -> dict:
    """``{"recall", "coverage"}`` of generated features ``fake [M, D]`` against ``real [N, D]``.

    Raises:
      ValueError: a set with no more than ``k`` points, or mismatched feature sizes.
    """
    real, fake = np.asarray(real), np.asarray(fake)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"need features [N, D] and [M, D], got {real.shape} and {fake.shape}")
    if k < 1 or min(len(real), len(fake)) <= k:
        raise ValueError(f"need k >= 1 and more than k = {k} points in each set, got {len(real)} real and "
                         f"{len(fake)} generated")
    cross = _sq_dists(real, fake)  # [N, M]
    recall = np.mean((cross <= _kth_radius(fake, k)[None, :]).any(axis=1))
    coverage = np.mean((cross <= _kth_radius(real, k)[:, None]).any(axis=1))
    return {"recall": float(recall), "coverage": float(coverage)}
