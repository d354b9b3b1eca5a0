"""The FD-digits feature network: a small CNN trained by Kairos on the digits train split.

Deterministic (fixed seed, fixed data order, full-batch-free plain loop) and fast
(a few seconds on 2 CPU cores). Trained once and cached as a ``.npz`` under
``$KAIROS_CACHE`` (default ``~/.cache/kairos``); the cache key includes a version
string, so changing the recipe below retrains.
"""

from __future__ import annotations

import hashlib
import os
import pathlib

import flax.linen as nn
import jax
import numpy as np
import optax
from flax import traverse_util

from diffusion.data.digits import load_digits

RECIPE = dict(version=1, features=128, epochs=40, batch=64, lr=2e-3, seed=0, shift_aug=1)


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


def cache_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("KAIROS_CACHE", pathlib.Path.home() / ".cache" / "kairos"))


def _cache_path() -> pathlib.Path:
    key = hashlib.sha1(repr(sorted(RECIPE.items())).encode()).hexdigest()[:12]
    return cache_dir() / f"fd_digits_cnn_{key}.npz"


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
    opt = optax.adam(RECIPE["lr"])
    opt_state = opt.init(params)

    @jax.jit
    def step(params, opt_state, xb, yb):
        def loss_fn(p):
            logits, _ = model.apply({"params": p}, xb)
            return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    rng = np.random.default_rng(RECIPE["seed"])
    b = RECIPE["batch"]
    for epoch in range(RECIPE["epochs"]):
        perm = rng.permutation(len(x))
        xs = _shift(x, rng, RECIPE["shift_aug"])
        for i in range(len(x) // b):
            idx = perm[i * b:(i + 1) * b]
            params, opt_state, loss = step(params, opt_state, xs[idx], y[idx])
        if verbose:
            print(f"digits classifier epoch {epoch}: loss {float(loss):.4f}")
    return jax.device_get(params)


def load_classifier() -> dict:
    """The cached classifier params, training (and caching) them on first use."""
    path = _cache_path()
    if path.exists():
        with np.load(path) as f:
            return traverse_util.unflatten_dict({tuple(k.split("/")): f[k] for k in f.files})
    params = train_classifier()
    path.parent.mkdir(parents=True, exist_ok=True)
    flat = {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(params).items()}
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **flat)
    os.replace(tmp, path)  # atomic: concurrent first uses never see half a file
    return params
