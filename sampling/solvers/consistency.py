"""Multistep consistency sampling (Song et al. 2023, Alg. 1; LCM's scheduler): at each
step take the model's ``x0 = f(x_t, t)`` and re-noise it to the next time with **fresh**
noise, ``x_s = alpha_s x0 + sigma_s z``; the last step (``s = 0``) returns ``x0``.
Consistency students sample on the ``lcm`` grid (``sampling/grids.py``): LCM's times, on the
lattice they were trained at; with it the chain equals diffusers' ``LCMScheduler``
(tests/sampling/test_consistency_solver.py)."""

from __future__ import annotations

import jax
from flax import struct

from diffusion.param import forward_noise
from diffusion.schedules import Schedule
from sampling.registry import SolverPart, register
from sampling.solvers.base import Model, Solver, SolverState, advance, fresh_noise, initial_state, predict


@struct.dataclass
class Consistency(Solver):
    """Stochastic; for consistency-distilled students (any denoiser runs, but only a
    consistency function makes it a good sampler)."""

    schedule: Schedule = struct.field(pytree_node=False)

    def init(self, x: jax.Array, key: jax.Array) -> SolverState:
        return initial_state(x, key)

    def step(self, state: SolverState, model: Model, t: jax.Array, t_next: jax.Array) -> SolverState:
        pred, state = predict(model, state, state.x, t)
        key, noise = fresh_noise(state)
        return advance(state, forward_noise(self.schedule, pred.x0, noise, t_next), key)


register(SolverPart("consistency", Consistency,
                    "multistep consistency sampling: re-noise the model's x0 with fresh noise (consistency students)"))
