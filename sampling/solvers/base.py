"""The solver interface: an (init, step) pair over a pytree state (docs/design/core.md).

A solver is a ``flax.struct`` dataclass. Its pytree fields (eta, ...) are traced under
``jit``, so sweeping them does not recompile; its static fields (the schedule) are part
of the compiled program. ``model(x, t) -> Prediction`` has params and conditioning
bound; ``t`` and ``t_next`` are arrays that broadcast against the batch (``[]`` from
the grid, ``[B]`` after a per-sample time shift).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import struct

from diffusion.param import Prediction

Model = Callable[[jax.Array, jax.Array], Prediction]


@struct.dataclass
class SolverState:
    """``x: [B, ...]`` the current sample; ``key``: the rng for stochastic steps;
    ``i``: int32 number of steps taken; ``aux``: solver-specific pytree (history)."""

    x: jax.Array
    key: jax.Array
    i: jax.Array
    aux: Any = None


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
