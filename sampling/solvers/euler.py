"""diffusers' Euler and Euler-ancestral schedulers (Karras et al. 2022's Algorithm 1 without
churn; k-diffusion's ``sample_euler_ancestral``) as solvers.

Both work in diffusers' variance-exploding view ``x_ve = x / alpha(t)`` with
``s(t) = sigma(t) / alpha(t)`` (``EulerDiscreteScheduler.step``, diffusers 0.42.1):

* ``euler``: ``d = (x_ve - x0) / s``, ``x_ve' = x_ve + (s' - s) d``;
* ``euler`` with ``ancestral=1``: ``s_up = sqrt(s'^2 (s^2 - s'^2) / s^2)``, ``s_down = sqrt(s'^2 - s_up^2)``,
  ``x_ve' = x_ve + (s_down - s) d + s_up z`` with ``z`` from the solver's key.

The state stays in Kairos' variance-preserving form ``x = alpha x_ve`` (what the network
takes: diffusers' ``scale_model_input``). On a grid of fractional diffusers timesteps the
schedule is diffusers' sigma reading (``sampling.grids.sampling_schedule``), so ``s`` is
diffusers' sigma. ``init_sigma = 1`` starts from ``sigma(t_0) z`` rather than ``z``, as
diffusers' Euler schedulers do for the ``linspace`` and ``trailing`` spacings (their
``init_noise_sigma`` is ``max sigma``, not ``sqrt(max sigma^2 + 1)``); the import of such a
folder sets it. Deterministic Euler is DDIM (eta 0) in other arithmetic; the test checks that.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from diffusion.schedules import Schedule, bcast_right
from sampling.registry import Knob, SolverPart, number, register
from sampling.solvers.base import Model, Solver, SolverState, advance, fresh_noise, initial_state, predict

INIT_SIGMA = Knob("init_sigma", number(0.0, 1.0), 0.0, flag="init_sigma", examples=(0.0, 1.0),
                  help="1: start from sigma(t_0) z, as diffusers' Euler schedulers do for the linspace and trailing "
                       "spacings (init_noise_sigma = max sigma); 0: from z")


def ve_view(schedule: Schedule, x: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(x_ve [B, ...], s, alpha)`` at ``t``: ``x / alpha``, ``sigma / alpha`` and ``alpha``, the last two
    right-broadcast to ``x``."""
    alpha, sigma = schedule.alpha_sigma(t)
    alpha, sigma = bcast_right(alpha, x), bcast_right(sigma, x)
    return x / alpha, sigma / alpha, alpha


def start_scale(state: SolverState, schedule: Schedule, t: jax.Array, init_sigma) -> jax.Array:
    """The state's ``x``, multiplied by ``sigma(t)`` on the first step when ``init_sigma`` is 1."""
    sigma = bcast_right(schedule.alpha_sigma(t)[1], state.x)
    scale = jnp.where((state.i == 0) & (jnp.asarray(init_sigma) > 0.5), sigma, jnp.ones_like(sigma))
    return state.x * scale


@struct.dataclass
class Euler(Solver):
    """``EulerDiscreteScheduler`` without churn (``ancestral = 0``) or
    ``EulerAncestralDiscreteScheduler`` (``ancestral = 1``). Both knobs are traced."""

    schedule: Schedule = struct.field(pytree_node=False)
    ancestral: jax.Array | float = 0.0
    init_sigma: jax.Array | float = 0.0

    def init(self, x: jax.Array, key: jax.Array) -> SolverState:
        return initial_state(x, key)

    def step(self, state: SolverState, model: Model, t: jax.Array, t_next: jax.Array) -> SolverState:
        x = start_scale(state, self.schedule, t, self.init_sigma)
        pred, state = predict(model, state, x, t)
        x_ve, s, _ = ve_view(self.schedule, x, t)
        _, s_to, alpha_next = ve_view(self.schedule, x, t_next)
        on = jnp.asarray(self.ancestral) > 0.5
        s_up = jnp.where(on, jnp.sqrt(jnp.clip(s_to**2 * (s**2 - s_to**2) / s**2, 0.0, None)), 0.0)
        s_down = jnp.where(on, jnp.sqrt(jnp.clip(s_to**2 - s_up**2, 0.0, None)), s_to)
        derivative = (x_ve - pred.x0) / s
        key, noise = fresh_noise(state)
        x_ve = x_ve + derivative * (s_down - s) + noise * s_up
        return advance(state, x_ve * alpha_next, key)


register(SolverPart("euler", Euler, "Euler (diffusers' EulerDiscreteScheduler, no churn; ancestral=1: "
                    "EulerAncestralDiscreteScheduler)", knobs=(
    Knob("ancestral", number(0.0, 1.0), 0.0, flag="ancestral", examples=(0.0, 1.0),
         help="1: Euler ancestral (a step to s_down plus fresh noise of s_up, diffusers' "
              "EulerAncestralDiscreteScheduler); 0: deterministic Euler"),
    INIT_SIGMA)))
