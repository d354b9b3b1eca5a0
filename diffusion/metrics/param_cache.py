"""Params of the metric networks Kairos trains itself, cached as ``.npz`` files under
``$KAIROS_CACHE`` (default ``~/.cache/kairos``), keyed by their recipe: changing a
recipe retrains, and a first use trains once."""

from __future__ import annotations

import hashlib
import os
import pathlib
from typing import Callable

import numpy as np
from flax import traverse_util


def cache_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("KAIROS_CACHE", pathlib.Path.home() / ".cache" / "kairos"))


def cache_path(name: str, recipe: dict) -> pathlib.Path:
    key = hashlib.sha1(repr(sorted(recipe.items())).encode()).hexdigest()[:12]
    return cache_dir() / f"{name}_{key}.npz"


def _read(path: pathlib.Path) -> dict:
    with np.load(path) as f:
        return traverse_util.unflatten_dict({tuple(k.split("/")): f[k] for k in f.files})


def sha256_of(path: pathlib.Path) -> str:
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


def cached_params(name: str, recipe: dict, train: Callable[[], dict], bundled: dict[str, str] | None = None) -> dict:
    """The params of ``(name, recipe)``: a file shipped beside the code, the cached ones,
    or ``train()``'s, written to the cache atomically (concurrent first uses never see
    half a file).

    Args:
      bundled: ``{path: sha256}`` of shipped params (what ``train()`` wrote to the cache,
        committed under the cache file's name, so a changed recipe never uses it). A
        shipped file that does not match its hash is an error naming it, never used.
    """
    path = cache_path(name, recipe)
    for shipped, digest in (bundled or {}).items():
        shipped = pathlib.Path(shipped)
        if shipped.name == path.name and shipped.exists():
            if sha256_of(shipped) != digest:
                raise ValueError(f"{shipped} does not match its recorded SHA-256 (damaged or replaced): restore it "
                                 f"with `git checkout -- {shipped}`, or delete it to retrain the {name} "
                                 "from its recipe")
            return _read(shipped)
    if path.exists():
        return _read(path)
    params = train()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")  # per process: parallel test workers may race
    np.savez(tmp, **{"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(params).items()})
    os.replace(tmp, path)
    return params


def fit(params: dict, opt, loss_fn: Callable, epoch_data: Callable, size: int, epochs: int, batch: int, seed: int,
        name: str = "", verbose: bool = False) -> dict:
    """Minibatch training of a metric network: each epoch draws a permutation of ``size``
    items, then ``epoch_data(rng) -> (x, y)`` (``y`` any pytree of ``[size, ...]``
    arrays, e.g. augmented inputs), and takes ``size // batch`` steps of
    ``loss_fn(params, xb, yb)`` with ``opt``. Deterministic for a ``seed``."""
    import jax
    import optax

    opt_state = opt.init(params)

    @jax.jit
    def step(params, opt_state, xb, yb):
        loss, grads = jax.value_and_grad(loss_fn)(params, xb, yb)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    rng = np.random.default_rng(seed)
    for epoch in range(epochs):
        perm = rng.permutation(size)
        x, y = epoch_data(rng)
        for i in range(size // batch):
            idx = perm[i * batch:(i + 1) * batch]
            params, opt_state, loss = step(params, opt_state, x[idx], jax.tree.map(lambda v: v[idx], y))
        if verbose:
            print(f"{name} epoch {epoch}: loss {float(loss):.4f}")
    return jax.device_get(params)
