"""``sample()``: the whole sampling chain as one jitted program over the solver's steps.

A denoiser that caches nothing runs as one ``lax.scan``. One with a step plan (attention
reuse, feature caching: ``denoise.step_plan``) runs in segments, each a store step and the
steps that read its cache, so the cache is loop-invariant inside a segment and never rides
the per-step carry; the same program serves every schedule (docs/design/caching.md).
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from diffusion.contract import COMPUTE, PLAIN, STORE, StepPlan


def step_plan(denoise: Any, num_steps: int) -> StepPlan:
    """``denoise.step_plan(num_steps)``, or a clear error for a denoiser without one."""
    if not hasattr(denoise, "step_plan"):
        raise TypeError(f"{type(denoise).__name__} has no step_plan(num_steps): a denoiser transform forwards its "
                        "inner denoiser's (diffusion/contract.py; Stateless gives a plain one)")
    return denoise.step_plan(num_steps)


def _chain(denoise: Callable, params: Any, solver, grid: jax.Array, x_T: jax.Array,
           cond: Mapping[str, jax.Array] | None, key: jax.Array, debug: bool, trajectory: bool = False):
    """``(final state, [N, *x.shape] states after each step or None)``."""
    num_steps = grid.shape[0] - 1
    plan = step_plan(denoise, num_steps)
    state = solver.init(x_T, key).replace(cache=denoise.init_cache(params, x_T, cond, num_steps))
    pairs = jnp.stack([grid[:-1], grid[1:]], axis=1)  # [N, 2]

    def step(state, i, modes=COMPUTE, cache=None):
        """One solver step at index ``i``; with ``cache``, the network reads that cache and the
        state's is left alone (a segment's loop-invariant cache), else the state's is threaded."""
        if cache is None:
            model = lambda x, t, c: denoise(params, x, t, cond, cache=c, step=i, modes=modes)  # noqa: E731
        else:
            model = lambda x, t, c: (denoise(params, x, t, cond, cache=cache if modes != COMPUTE else {},  # noqa: E731
                                             step=i, modes=modes)[0], c)
        return solver.step(state, model, pairs[i, 0], pairs[i, 1])

    if debug:  # the same steps, eager, one Python iteration per step
        attention, features = plan.codes(num_steps) if plan.caches else (None, None)
        xs = []
        for i in range(num_steps):
            modes = plan.modes(int(attention[i]), int(features[i])) if plan.caches else COMPUTE
            state = step(state, jnp.int32(i), modes)
            xs.append(state.x)
        return state, (jnp.stack(xs) if trajectory else None)
    if not plan.caches:
        def body(state, ts):
            model = lambda x, t, c: denoise(params, x, t, cond, cache=c, step=state.i)  # noqa: E731
            state = solver.step(state, model, ts[0], ts[1])
            return state, (state.x if trajectory else None)

        return jax.lax.scan(body, state, pairs)
    return _segments(plan, state, step, num_steps, trajectory)


def _segments(plan: StepPlan, state, step: Callable, num_steps: int, trajectory: bool):
    """The steps of a plan as segments: step 0 and every store step start one; the store step
    writes the cache, the segment's other steps read it as a loop-invariant value."""
    attention, features = plan.codes(num_steps)
    kinds_a = range(3) if plan.attention is not None else (PLAIN,)
    kinds_f = range(3) if plan.features is not None else (PLAIN,)
    pairs = list(itertools.product(kinds_a, kinds_f))
    stores = [p for p in pairs if STORE in p]
    reads = [p for p in pairs if STORE not in p]
    lookup = lambda chosen: jnp.asarray([chosen.index(p) if p in chosen else 0 for p in pairs], jnp.int32)  # noqa: E731
    code = attention * len(kinds_f) + features  # the index of a step's (attention, features) pair
    store_of, read_of = lookup(stores), lookup(reads)
    is_store = (attention == STORE) | (features == STORE)
    is_start = is_store | (jnp.arange(num_steps) == 0)
    starts = jnp.nonzero(is_start, size=num_steps, fill_value=num_steps)[0].astype(jnp.int32)
    stops = jnp.concatenate([starts[1:], jnp.full((1,), num_steps, jnp.int32)])
    cache = state.cache
    xs = jnp.zeros((num_steps, *state.x.shape), state.x.dtype) if trajectory else None
    record = (lambda xs, state, i: xs.at[i].set(state.x)) if trajectory else (lambda xs, state, i: xs)  # noqa: E731

    def segment(s, carry):
        state, cache, xs = carry
        start, stop = starts[s], stops[s]

        def store_first(state, cache, xs):
            branches = [lambda st, p=p: step(st, start, plan.modes(*p)) for p in stores]
            state = jax.lax.switch(store_of[code[start]], branches, state.replace(cache=cache))
            return state.replace(cache={}), state.cache, record(xs, state, start)

        state, cache, xs = jax.lax.cond(is_store[start], store_first, lambda *c: c, state, cache, xs)

        def read(i, carry):
            state, xs = carry
            branches = [lambda st, p=p: step(st, i, plan.modes(*p), cache) for p in reads]
            state = jax.lax.switch(read_of[code[i]], branches, state)
            return state, record(xs, state, i)

        state, xs = jax.lax.fori_loop(start + is_store[start].astype(jnp.int32), stop, read, (state, xs))
        return state, cache, xs

    count = jnp.sum(is_start).astype(jnp.int32)
    state, cache, xs = jax.lax.fori_loop(0, count, segment, (state.replace(cache={}), cache, xs))
    return state.replace(cache=cache), xs


_chain_jit = jax.jit(_chain, static_argnames=("debug", "trajectory"))


def sample(denoise: Callable, params: Any, solver, grid: jax.Array, x_T: jax.Array,
           cond: Mapping[str, jax.Array] | None = None, key: jax.Array | None = None,
           *, debug: bool = False) -> jax.Array:
    """Runs a solver over a time grid.

    Args:
      denoise: a denoiser (``diffusion.contract``) as a pytree (e.g.
        ``diffusion.nn.denoiser.Denoiser``, ``sampling.transforms.guidance.Guided``):
        its leaves (a guidance scale, a reuse schedule) are traced, its structure is
        static. It is called as ``denoise(params, x, t, cond, cache=, step=, modes=) ->
        (Prediction, cache)``; its step plan (``step_plan``) says each step's modes.
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
