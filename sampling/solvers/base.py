"""The solver interface: an (init, step) pair over a pytree state (docs/design/core.md).

A solver is a ``flax.struct`` dataclass. Its pytree fields (eta, ...) are traced under
``jit``, so sweeping them does not recompile; its static fields (the schedule) are part
of the compiled program. ``model(x, t, cache) -> (Prediction, cache)`` has params,
conditioning and the step index bound; solvers call it through :func:`predict`, which
threads the denoiser's cache (attention maps, features; docs/design/caching.md) held in
``SolverState.cache``. ``t`` and ``t_next`` are arrays that broadcast against the batch
(``[]`` from the grid, ``[B]`` after a per-sample time shift).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import struct

from diffusion.param import Prediction

Model = Callable[[jax.Array, jax.Array, Any], tuple[Prediction, Any]]


class Solver:
    """Mixin of every solver dataclass: the network evaluations of a run of ``steps`` steps
    (one per step unless a solver says otherwise, like F-PNDM's warm start)."""

    def network_calls(self, steps: int) -> int:
        return steps


@struct.dataclass
class SolverState:
    """``x: [B, ...]`` the current sample; ``key``: the rng for stochastic steps;
    ``i``: int32 number of steps taken; ``aux``: solver-specific pytree (history);
    ``cache``: the denoiser's cache across steps (``{}`` for denoisers that keep none)."""

    x: jax.Array
    key: jax.Array
    i: jax.Array
    aux: Any = None
    cache: Any = dataclasses.field(default_factory=dict)


def initial_state(x: jax.Array, key: jax.Array, aux: Any = None) -> SolverState:
    return SolverState(x=x, key=key, i=jnp.zeros((), jnp.int32), aux=aux)


def advance(state: SolverState, x: jax.Array, key: jax.Array | None = None, aux: Any = None) -> SolverState:
    """The next state: new ``x`` (and key / aux when given), step count + 1."""
    return state.replace(
        x=x,
        key=state.key if key is None else key,
        i=state.i + 1,
        aux=state.aux if aux is None else aux,
    )


def fresh_noise(state: SolverState) -> tuple[jax.Array, jax.Array]:
    """``(next key, standard normal noise shaped like state.x)`` for a stochastic step."""
    key, sub = jax.random.split(state.key)
    return key, jax.random.normal(sub, state.x.shape, state.x.dtype)


def predict(model: Model, state: SolverState, x: jax.Array, t: jax.Array) -> tuple[Prediction, SolverState]:
    """One network call at ``(x, t)``; returns the prediction and ``state`` with the
    denoiser's updated cache."""
    pred, cache = model(x, t, state.cache)
    return pred, state.replace(cache=cache)
