"""Recall and coverage against a loop-by-loop float64 reference and closed cases."""

import numpy as np
import pytest

from diffusion.metrics.coverage import recall_coverage


def reference(real, fake, k):
    def kth(points, i):
        d = sorted(np.linalg.norm(points[i] - points[j]) for j in range(len(points)) if j != i)
        return d[k - 1]

    r_fake = [kth(fake, j) for j in range(len(fake))]
    r_real = [kth(real, i) for i in range(len(real))]
    recall = np.mean([any(np.linalg.norm(x - f) <= r_fake[j] for j, f in enumerate(fake)) for x in real])
    coverage = np.mean([any(np.linalg.norm(x - f) <= r_real[i] for f in fake) for i, x in enumerate(real)])
    return recall, coverage


@pytest.mark.parametrize("k", [1, 3, 5])
def test_matches_the_loop_reference(k):
    rng = np.random.default_rng(k)
    real, fake = rng.normal(size=(40, 3)), rng.normal(0.7, 0.6, size=(30, 3))
    got = recall_coverage(real, fake, k)
    want = reference(real, fake, k)
    assert (got["recall"], got["coverage"]) == pytest.approx(want, abs=1e-12)
    assert 0 < got["recall"] < 1 and 0 < got["coverage"] < 1  # a case that tells the two apart


def test_closed_cases():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(50, 4))
    assert recall_coverage(real, real.copy()) == {"recall": 1.0, "coverage": 1.0}
    assert recall_coverage(real, real + 100.0) == {"recall": 0.0, "coverage": 0.0}
    collapsed = np.repeat(real[:1], 50, axis=0)  # mode collapse onto one real point
    out = recall_coverage(real, collapsed)
    assert out["recall"] == 1 / 50  # the generated manifold has radius 0: only that point
    assert out["coverage"] < 0.5  # the real points whose own 5-NN ball holds it


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="more than k = 5"):
        recall_coverage(np.zeros((5, 2)), np.zeros((10, 2)))
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        recall_coverage(np.zeros((10, 2)), np.zeros((10, 3)))
