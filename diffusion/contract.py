"""The denoiser contract shared by the network wrapper, every sampling transform and
every test model (docs/design/registry.md)::

    denoise(params, x_t, t, cond=None, *, cache=None, step=None, modes=COMPUTE, rng=None, train=False)
        -> (Prediction, cache)
    denoise.init_cache(params, x_t, cond=None, num_steps=None, modes=COMPUTE) -> cache

``cache`` is a pytree, ``{}`` for a denoiser that keeps nothing across sampling steps;
``modes`` says what a call computes, stores or reuses.
"""

from __future__ import annotations

import dataclasses

ATTENTION_MODES = ("compute", "store", "reuse")
FEATURE_MODES = ("compute", "store", "retrieve")


@dataclasses.dataclass(frozen=True)
class Modes:
    """Static switches of one network call (hashable: each combination is one traced program).

    Attributes:
      attention: ``"compute"``; ``"store"`` also writes every self-attention map
        ``[B, H, L, L]`` to the cache; ``"reuse"`` multiplies the cached map by the
        current values (no query/key projection, no softmax).
      features: ``"compute"``; ``"store"`` also caches the deep feature entering the
        shallow decoder path of skip branch ``feature_branch``; ``"retrieve"`` runs only
        that shallow path on the cached feature.
      feature_branch: the skip branch of ``features`` (0 = shallowest).
    """

    attention: str = "compute"
    features: str = "compute"
    feature_branch: int = 0

    def __post_init__(self):
        if self.attention not in ATTENTION_MODES:
            raise ValueError(f"unknown attention mode {self.attention!r}; expected one of {ATTENTION_MODES}")
        if self.features not in FEATURE_MODES:
            raise ValueError(f"unknown features mode {self.features!r}; expected one of {FEATURE_MODES}")
        if self.feature_branch < 0:
            raise ValueError(f"feature_branch must be >= 0, got {self.feature_branch}")

    def replace(self, **changes) -> "Modes":
        return dataclasses.replace(self, **changes)


COMPUTE = Modes()


class Stateless:
    """Mixin for a denoiser that caches nothing across sampling steps: ``init_cache -> {}``.
    Its ``__call__`` returns ``(Prediction, {})``."""

    def init_cache(self, params, x_t, cond=None, num_steps=None, modes: Modes = COMPUTE) -> dict:
        del params, x_t, cond, num_steps, modes
        return {}
