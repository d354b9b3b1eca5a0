"""FD-digits: a Frechet distance on digits-CNN features, and class accuracy of samples.

A *proxy*, not FID: the feature network is a 64-feature CNN trained on the 1,437 digits
train images (``digits_classifier.py``), and the reference set is the 360 held-out
digits. On this metric the train split vs the held-out split scores about 2 (the
floor for finite samples); blurred, noisy or mode-collapsed sets score far higher
(tests/metrics/test_fd_digits.py).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from diffusion.data.digits import load_digits, to_8x8
from diffusion.metrics.digits_classifier import DigitsCNN, RECIPE, load_classifier
from diffusion.metrics.frechet import feature_stats, frechet_distance


@functools.lru_cache(maxsize=1)
def _apply_fn():
    params = load_classifier()
    model = DigitsCNN(RECIPE["features"])
    return jax.jit(lambda x: model.apply({"params": params}, x))


def classify(images: np.ndarray, batch: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """``[N, R, R, 1]`` in ``[-1, 1]`` -> ``(logits [N, 10], raw features [N, 128])``.

    Images are clipped to ``[-1, 1]`` and average-pooled to 8x8 first.
    """
    x = np.clip(to_8x8(np.asarray(images, np.float32)), -1.0, 1.0)
    fn = _apply_fn()
    logits, feats = [], []
    for i in range(0, len(x), batch):
        chunk = x[i:i + batch]
        pad = batch - len(chunk)  # one compiled shape for every chunk
        lo, fe = fn(jnp.asarray(np.pad(chunk, ((0, pad), (0, 0), (0, 0), (0, 0)))))
        logits.append(np.asarray(lo)[:len(chunk)])
        feats.append(np.asarray(fe)[:len(chunk)])
    return np.concatenate(logits), np.concatenate(feats)


@functools.lru_cache(maxsize=1)
def reference_stats() -> tuple[np.ndarray, np.ndarray, float]:
    """``(mean, covariance, scale)`` of the 360 held-out digits' normalised features.

    ``scale`` multiplies raw features so that the held-out covariance has trace ``D``.
    """
    x, _ = load_digits("heldout")
    feats = classify(x)[1]
    _, cov = feature_stats(feats)
    scale = float(np.sqrt(feats.shape[1] / np.trace(cov)))
    return (*feature_stats(feats * scale), scale)


def fd_digits(images: np.ndarray, labels: np.ndarray | None = None) -> dict:
    """Scores generated digits.

    Args:
      images: ``[N, R, R, 1]`` in ``[-1, 1]``, R a multiple of 8 (N >= 2; use >= 1000).
      labels: ``[N]`` the classes the samples were asked to show, or None.

    Returns:
      ``{"fd_digits": float, "num": N}`` plus ``"class_accuracy"`` when labels are given
      (the fraction the classifier assigns to the asked-for class).
    """
    logits, feats = classify(images)
    ref_mu, ref_cov, scale = reference_stats()
    mu, cov = feature_stats(feats * scale)
    out = {"fd_digits": frechet_distance(mu, cov, ref_mu, ref_cov), "num": int(len(images))}
    if labels is not None:
        out["class_accuracy"] = float(np.mean(np.argmax(logits, -1) == np.asarray(labels)))
    return out
