"""``sample()``: the whole sampling chain as one jitted ``lax.scan`` over solver steps."""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp


def _chain(denoise: Callable, params: Any, solver, grid: jax.Array, x_T: jax.Array,
           cond: Mapping[str, jax.Array] | None, key: jax.Array, debug: bool, trajectory: bool = False):
    """``(final state, [N, *x.shape] states after each step or None)``."""
    state = solver.init(x_T, key).replace(cache=denoise.init_cache(params, x_T, cond, grid.shape[0] - 1))

    def body(state, ts):
        step = state.i
        model = lambda x, t, cache: denoise(params, x, t, cond, cache=cache, step=step)  # noqa: E731
        state = solver.step(state, model, ts[0], ts[1])
        return state, (state.x if trajectory else None)

    pairs = jnp.stack([grid[:-1], grid[1:]], axis=1)  # [N, 2]
    if debug:
        xs = []
        for ts in pairs:  # same step, eager, one Python iteration per step
            state, x = body(state, ts)
            xs.append(x)
        return state, (jnp.stack(xs) if trajectory else None)
    return jax.lax.scan(body, state, pairs)


_chain_jit = jax.jit(_chain, static_argnames=("debug", "trajectory"))


def sample(denoise: Callable, params: Any, solver, grid: jax.Array, x_T: jax.Array,
           cond: Mapping[str, jax.Array] | None = None, key: jax.Array | None = None,
           *, debug: bool = False) -> jax.Array:
    """Runs a solver over a time grid.

    Args:
      denoise: a denoiser (``diffusion.contract``) as a pytree (e.g.
        ``diffusion.nn.denoiser.Denoiser``, ``sampling.transforms.guidance.Guided``):
        its leaves (a guidance scale, a reuse schedule) are traced, its structure is
        static. It is called as ``denoise(params, x, t, cond, cache=, step=) ->
        (Prediction, cache)``; its cache (``init_cache``) rides in the solver state.
      params: network parameters (traced).
      solver: a solver dataclass (``sampling.solvers``); its knobs are traced.
      grid: ``[N + 1]`` decreasing times (``sampling.grids.make_grid``); ``N`` is static.
      x_T: ``[B, ...]`` the starting noise.
      cond: conditioning dict passed to the denoiser (``{"label": [B]}``).
      key: rng for stochastic solvers (default ``PRNGKey(0)``).
      debug: run the steps in a Python loop, un-jitted, to step through them.

    Returns:
      ``[B, ...]`` the final sample.
    """
    key = jax.random.PRNGKey(0) if key is None else key
    if debug:
        return _chain(denoise, params, solver, grid, x_T, cond, key, True)[0].x
    return _chain_jit(denoise, params, solver, grid, x_T, cond, key, False)[0].x


def sample_trajectory(denoise: Callable, params: Any, solver, grid: jax.Array, x_T: jax.Array,
                      cond: Mapping[str, jax.Array] | None = None, key: jax.Array | None = None) -> jax.Array:
    """Like :func:`sample` but returns every state: ``[N, B, ...]``, entry ``i`` at time
    ``grid[i + 1]`` (the last is the final sample). For diagnostics (exposure bias)."""
    key = jax.random.PRNGKey(0) if key is None else key
    return _chain_jit(denoise, params, solver, grid, x_T, cond, key, False, True)[1]
