"""The FD-digits feature network: a small CNN trained by Kairos on the digits train split.

Deterministic (fixed seed, fixed data order, full-batch-free plain loop) and fast
(about 20 seconds on 2 CPU cores). The params of :data:`RECIPE` ship beside this file
(SHA-256 checked, like the scene parser's); another recipe trains once and is cached as a
``.npz`` under ``$KAIROS_CACHE`` (default ``~/.cache/kairos``), keyed by the recipe.
"""

from __future__ import annotations

import pathlib

import flax.linen as nn
import jax
import numpy as np
import optax

from diffusion.data.digits import load_digits
from diffusion.metrics.param_cache import cached_params, fit

RECIPE = dict(version=1, features=128, epochs=40, batch=64, lr=2e-3, seed=0, shift_aug=1)
# what training RECIPE wrote to the cache (bit-identical across runs), shipped so no first use waits for it
SHIPPED = pathlib.Path(__file__).with_name("fd_digits_cnn_6bbf1cf0a978.npz")
SHIPPED_SHA256 = "35d98d4ffa7372cae6ac391fbd544d9dffcd5a551da788ede7165c875b50642b"


class DigitsCNN(nn.Module):
    """``[B, 8, 8, 1]`` in ``[-1, 1]`` -> ``(logits [B, 10], features [B, features])``."""

    features: int = 128

    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Conv(32, (3, 3), name="conv_0")(x))
        h = nn.relu(nn.Conv(64, (3, 3), name="conv_1")(h))
        h = nn.avg_pool(h, (2, 2), (2, 2))  # 4x4
        h = nn.relu(nn.Conv(64, (3, 3), name="conv_2")(h))
        h = h.reshape(h.shape[0], -1)
        feats = nn.relu(nn.Dense(self.features, name="dense_0")(h))
        return nn.Dense(10, name="logits")(feats), feats


def _shift(x: np.ndarray, rng: np.random.Generator, max_shift: int) -> np.ndarray:
    """Random integer translations by up to ``max_shift`` pixels with zero (-1) fill."""
    out = np.full_like(x, -1.0)
    for i, (dy, dx) in enumerate(rng.integers(-max_shift, max_shift + 1, size=(len(x), 2))):
        src = x[i, max(0, -dy): 8 - max(0, dy), max(0, -dx): 8 - max(0, dx)]
        out[i, max(0, dy): max(0, dy) + src.shape[0], max(0, dx): max(0, dx) + src.shape[1]] = src
    return out


def train_classifier(verbose: bool = False) -> dict:
    """Trains the CNN from scratch on the digits train split; returns its params."""
    x, y = load_digits("train")
    model = DigitsCNN(RECIPE["features"])
    params = model.init(jax.random.PRNGKey(RECIPE["seed"]), x[:1])["params"]

    def loss_fn(p, xb, yb):
        logits, _ = model.apply({"params": p}, xb)
        return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

    return fit(params, optax.adam(RECIPE["lr"]), loss_fn, lambda rng: (_shift(x, rng, RECIPE["shift_aug"]), y),
               len(x), RECIPE["epochs"], RECIPE["batch"], RECIPE["seed"], "digits classifier", verbose)


def load_classifier() -> dict:
    """The cached classifier params, training (and caching) them on first use."""
    return cached_params("fd_digits_cnn", RECIPE, train_classifier, {SHIPPED: SHIPPED_SHA256})
