"""The feature-cache hand-off shared by the UNets (docs/design/caching.md): the deep
feature entering the shallow decoder path of a skip branch."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

FEATURES = "deep_features"  # the variable collection holding the cached decoder input


def hand_over(module: nn.Module, h: jnp.ndarray, features: str) -> jnp.ndarray:
    """At the first shallow up block (called from ``module``'s compact ``__call__``):
    ``store`` caches ``h``; ``retrieve`` replaces it by the feature cached at the last full step."""
    if features == "store":
        module.put_variable(FEATURES, "h", h)
    if features == "retrieve":
        h = module.get_variable(FEATURES, "h")
        if h is None:
            raise ValueError("features='retrieve' needs a feature from an earlier features='store' call "
                             "(pass the deep_features collection)")
    return h
