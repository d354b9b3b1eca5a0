"""Rewards: ``(images [B, H, W, C] in [-1, 1], labels [B] or None) -> [B]``, traceable under
``jit`` (PSO's online ranking, docs/design/pso.md; results pages score with them too).

Registered by name; :func:`register` adds one (a module in ``$KAIROS_REWARDS`` may call it).
Bundled, on the digits CNN (``diffusion/metrics/digits_classifier.py``):

* ``thick``: a classifier score for the thick-stroke style (``digits_thick``): the log-odds
  of a logistic regression on the CNN's features, fitted (L-BFGS, deterministic) to tell
  the train digits from their thickened copies;
* ``class``: the CNN's log-probability of the asked-for class.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from diffusion.plugins import import_modules

Reward = Callable[[jax.Array, "jax.Array | None"], jax.Array]
_REWARDS: dict[str, Callable[[], Reward]] = {}  # name -> factory (built on first use)


def register(name: str, factory: Callable[[], Reward]) -> None:
    if name in _REWARDS and _REWARDS[name] is not factory:
        raise ValueError(f"a reward named {name!r} is already registered")
    _REWARDS[name] = factory


def names() -> list[str]:
    import_modules((), "KAIROS_REWARDS")
    return sorted(_REWARDS)


@functools.lru_cache(maxsize=None)
def get(name: str) -> Reward:
    """The reward called ``name``.

    Raises:
      ValueError: an unknown name (lists the registered ones).
    """
    if name not in names():
        raise ValueError(f"unknown reward {name!r}; registered: {', '.join(names())}")
    return _REWARDS[name]()


def _cnn() -> Callable[[jax.Array], tuple[jax.Array, jax.Array]]:
    """The digits CNN as a traceable ``images [B, R, R, 1] -> (logits [B, 10], features [B, F])``
    (images clipped to [-1, 1] and average-pooled to 8x8, as ``fd_digits.classify``)."""
    from diffusion.metrics.digits_classifier import DigitsCNN, RECIPE, load_classifier

    params, model = load_classifier(), DigitsCNN(RECIPE["features"])

    def apply(images):
        b, r = images.shape[0], images.shape[1]
        f = r // 8
        x = jnp.clip(images.astype(jnp.float32), -1.0, 1.0).reshape(b, 8, f, 8, f, 1).mean(axis=(2, 4))
        return model.apply({"params": params}, x)

    return apply


def _thick() -> Reward:
    from sklearn.linear_model import LogisticRegression

    from diffusion.data.digits import load_digits
    from diffusion.metrics.fd_digits import classify

    plain, thick = classify(load_digits("train")[0])[1], classify(load_digits("train", thick=True)[0])[1]
    feats = np.concatenate([plain, thick])
    mu, sd = feats.mean(0), feats.std(0) + 1e-6
    fit = LogisticRegression(max_iter=2000).fit((feats - mu) / sd, np.r_[np.zeros(len(plain)), np.ones(len(thick))])
    w, b = jnp.asarray(fit.coef_[0] / sd, jnp.float32), float(fit.intercept_[0] - (fit.coef_[0] * mu / sd).sum())
    cnn = _cnn()
    return lambda images, labels=None: cnn(images)[1] @ w + b


def _class() -> Reward:
    cnn = _cnn()

    def reward(images, labels):
        if labels is None:
            raise ValueError("the 'class' reward needs the asked-for labels (a class-conditional model)")
        logp = jax.nn.log_softmax(cnn(images)[0])
        return jnp.take_along_axis(logp, labels[:, None].astype(jnp.int32), axis=1)[:, 0]

    return reward


register("thick", _thick)
register("class", _class)
