"""The denoiser contract shared by the network wrapper, every sampling transform and
every test model (docs/design/registry.md)::

    denoise(params, x_t, t, cond=None, *, cache=None, step=None, modes=COMPUTE, rng=None, train=False)
        -> (Prediction, cache)
    denoise.init_cache(params, x_t, cond=None, num_steps=None, modes=COMPUTE) -> cache
    denoise.step_plan(num_steps) -> StepPlan

``cache`` is a pytree, ``{}`` for a denoiser that keeps nothing across sampling steps;
``modes`` says what a call computes, stores or reuses; the step plan says which modes each
sampler step runs (docs/design/caching.md: the sampling loop reads it).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import struct

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
PLAIN, STORE, REUSE = 0, 1, 2  # step-plan codes: index into ATTENTION_MODES / FEATURE_MODES


@struct.dataclass
class StepPlan:
    """What the network calls of each of ``N`` sampler steps do (docs/design/caching.md).

    Attributes:
      attention: ``int32 [N]`` traced codes, ``ATTENTION_MODES[code]`` per step (0 plain,
        1 store, 2 reuse), or None: no transform caches attention maps.
      features: ``int32 [N]``, ``FEATURE_MODES[code]`` per step (0 plain, 1 store,
        2 retrieve), or None: no transform caches features.
      feature_branch: the skip branch of cached features (static).
    """

    attention: jax.Array | None = None
    features: jax.Array | None = None
    feature_branch: int = struct.field(pytree_node=False, default=0)

    @property
    def caches(self) -> bool:
        return self.attention is not None or self.features is not None

    def codes(self, num_steps: int) -> tuple[jax.Array, jax.Array]:
        """``(attention codes [N], feature codes [N])``, plain where the plan has none.

        With both kinds, a full (feature-computing) step also stores its maps when the next
        full step reuses them: on the steps between, the deep layers do not run, so a reuse
        step reads each layer's map from the last step that ran that layer."""
        plain = jnp.full((num_steps,), PLAIN, jnp.int32)
        attention = plain if self.attention is None else jnp.asarray(self.attention, jnp.int32)
        features = plain if self.features is None else jnp.asarray(self.features, jnp.int32)
        if self.attention is not None and self.features is not None:
            reuse, full = attention == REUSE, features != REUSE
            later_full = jnp.where(full, jnp.arange(num_steps), num_steps)
            next_full = jax.lax.cummin(jnp.concatenate([later_full[1:], jnp.full((1,), num_steps)]), reverse=True)
            reused_deep = full & jnp.append(reuse, False)[next_full]
            attention = jnp.where(~reuse & reused_deep, STORE, attention)
        return attention, features

    def modes(self, attention: int, features: int) -> Modes:
        """The static ``Modes`` of a pair of codes."""
        return Modes(ATTENTION_MODES[attention], FEATURE_MODES[features], self.feature_branch)


def read_plan(read: jax.Array) -> jax.Array:
    """``int32 [N]`` step-plan codes of ``read: bool [N]`` (steps that read the cache; step 0
    never does): a step reads (2), stores because the next step reads (1), or is plain (0)."""
    read = jnp.asarray(read, bool) & (jnp.arange(read.shape[0]) > 0)
    store = ~read & jnp.concatenate([read[1:], jnp.zeros((1,), bool)])
    return jnp.where(read, REUSE, jnp.where(store, STORE, PLAIN)).astype(jnp.int32)


class Stateless:
    """Mixin for a denoiser that caches nothing across sampling steps: ``init_cache -> {}``,
    a plain step plan. Its ``__call__`` returns ``(Prediction, {})``."""

    def init_cache(self, params, x_t, cond=None, num_steps=None, modes: Modes = COMPUTE) -> dict:
        del params, x_t, cond, num_steps, modes
        return {}

    def step_plan(self, num_steps: int) -> StepPlan:
        del num_steps
        return StepPlan()
