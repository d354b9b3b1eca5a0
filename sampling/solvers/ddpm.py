"""DDPM ancestral sampling (Ho et al. 2020): sample the Gaussian posterior
``q(x_s | x_t, x0 = x0_hat)`` at every step."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from diffusion.schedules import Schedule, bcast_right
from sampling.solvers.base import Model, SolverState, advance, fresh_noise, initial_state, predict


def posterior_mean_std(x0, x_t, alpha_s, sigma_s, alpha_t, sigma_t):
    """Mean ``[B, ...]`` and std (time shape) of ``q(x_s | x_t, x0)`` for ``s < t``.

    With ``alpha_ts = alpha_t / alpha_s`` and ``var_ts = sigma_t^2 - alpha_ts^2 sigma_s^2``:
    mean ``= alpha_s var_ts / sigma_t^2 x0 + alpha_ts sigma_s^2 / sigma_t^2 x_t``,
    variance ``= var_ts sigma_s^2 / sigma_t^2``.
    """
    alpha_ts = alpha_t / alpha_s
    var_ts = jnp.clip(sigma_t**2 - alpha_ts**2 * sigma_s**2, 0.0, None)
    inv = 1.0 / jnp.maximum(sigma_t**2, 1e-12)
    b = lambda a: bcast_right(a, x0)  # noqa: E731
    mean = b(alpha_s * var_ts * inv) * x0 + b(alpha_ts * sigma_s**2 * inv) * x_t
    return mean, jnp.sqrt(var_ts * sigma_s**2 * inv)


@struct.dataclass
class DDPM:
    """Ancestral sampler with the posterior variance (DDPM's ``beta_tilde``)."""

    schedule: Schedule = struct.field(pytree_node=False)

    def init(self, x: jax.Array, key: jax.Array) -> SolverState:
        return initial_state(x, key)

    def step(self, state: SolverState, model: Model, t: jax.Array, t_next: jax.Array) -> SolverState:
        pred, state = predict(model, state, state.x, t)
        alpha_t, sigma_t = self.schedule.alpha_sigma(t)
        alpha_s, sigma_s = self.schedule.alpha_sigma(t_next)
        mean, std = posterior_mean_std(pred.x0, state.x, alpha_s, sigma_s, alpha_t, sigma_t)
        key, noise = fresh_noise(state)
        return advance(state, mean + bcast_right(std, mean) * noise, key)
