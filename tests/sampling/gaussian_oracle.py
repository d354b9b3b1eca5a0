"""An exact denoiser for Gaussian data ``x0 ~ N(mu, s^2 I)`` (test helper).

``E[x0 | x_t] = mu + alpha s^2 / (alpha^2 s^2 + sigma^2) (x_t - alpha mu)``.
"""

import dataclasses

import jax.numpy as jnp

from diffusion.param import Prediction
from diffusion.schedules import Schedule, bcast_right


@dataclasses.dataclass(frozen=True)
class GaussianDenoiser:
    schedule: Schedule
    mu: float = 0.5
    s: float = 0.3

    def __call__(self, params, x_t, t, cond=None, **_):
        a, sig = self.schedule.alpha_sigma(jnp.broadcast_to(jnp.asarray(t, jnp.float32), x_t.shape[:1]))
        a, sig = bcast_right(a, x_t), bcast_right(sig, x_t)
        x0 = self.mu + a * self.s**2 / (a**2 * self.s**2 + sig**2) * (x_t - a * self.mu)
        eps = (x_t - a * x0) / jnp.maximum(sig, 1e-6)
        return Prediction(x0=x0, eps=eps)
