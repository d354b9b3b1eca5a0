"""DDIM (Song et al. 2021) with a traced ``eta``; ``eta = 0`` is the probability-flow ODE's
first-order solver, ``eta = 1`` DDPM's ancestral sampler (the Gaussian posterior
``q(x_s | x_t, x0 = x0_hat)`` with DDPM's ``beta_tilde`` variance).

``clip_x0 = c > 0`` (traced) clips the model's ``x0`` to ``[-c, c]`` at every step and
recomputes ``eps = (x_t - alpha_t x0) / sigma_t`` from the clipped ``x0``, as Salimans &
Ho's evaluation sampler does with ``c = 1`` (google-research ``diffusion_distillation``
``dpm.py:159-164``, ``eval_clip_denoised=True`` in ``config/cifar_distill.py:76``). Only
for data in ``[-1, 1]`` (pixels), never latents; ``0`` (the default) leaves the
prediction untouched."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from diffusion.schedules import Schedule, bcast_right
from sampling.registry import Knob, SolverPart, number, register
from sampling.solvers.base import Model, Solver, SolverState, advance, fresh_noise, initial_state, predict


def clip_prediction(x0, eps, x_t, alpha_t, sigma_t, clip):
    """``(x0, eps)`` with ``x0`` clipped to ``[-clip, clip]`` and ``eps`` recomputed from it,
    where ``clip > 0``; unchanged (bit for bit) where ``clip <= 0``. ``x0, eps, x_t: [B, ...]``;
    ``alpha_t, sigma_t``: the time shape, right-broadcast; ``clip``: a scalar (traced)."""
    b = lambda a: bcast_right(a, x0)  # noqa: E731
    on = jnp.asarray(clip) > 0
    x0_c = jnp.clip(x0, -clip, clip)
    eps_c = (x_t - b(alpha_t) * x0_c) / b(jnp.maximum(sigma_t, 1e-12))
    return jnp.where(on, x0_c, x0), jnp.where(on, eps_c, eps)


def ddim_update(x0, eps, alpha_s, sigma_s, alpha_t, sigma_t, eta, noise):
    """One DDIM step from time t to s < t, for ``x0, eps, noise: [B, ...]``.

    ``sigma_eta = eta * (sigma_s / sigma_t) * sqrt(1 - alpha_t^2 / alpha_s^2)``, then
    ``x_s = alpha_s x0 + sqrt(sigma_s^2 - sigma_eta^2) eps + sigma_eta noise``.
    The schedule values have the time shape and are right-broadcast.
    """
    ratio = jnp.where(sigma_t > 0, sigma_s / jnp.maximum(sigma_t, 1e-12), 0.0)
    sigma_eta = eta * ratio * jnp.sqrt(jnp.clip(1.0 - (alpha_t / alpha_s) ** 2, 0.0, None))
    dir_coef = jnp.sqrt(jnp.clip(sigma_s**2 - sigma_eta**2, 0.0, None))
    b = lambda a: bcast_right(a, x0)  # noqa: E731
    return b(alpha_s) * x0 + b(dir_coef) * eps + b(sigma_eta) * noise


@struct.dataclass
class DDIM(Solver):
    """DDIM solver. ``eta`` and ``clip_x0`` are traced (pytree leaves)."""

    schedule: Schedule = struct.field(pytree_node=False)
    eta: jax.Array | float = 0.0
    clip_x0: jax.Array | float = 0.0

    def init(self, x: jax.Array, key: jax.Array) -> SolverState:
        return initial_state(x, key)

    def step(self, state: SolverState, model: Model, t: jax.Array, t_next: jax.Array) -> SolverState:
        pred, state = predict(model, state, state.x, t)
        alpha_t, sigma_t = self.schedule.alpha_sigma(t)
        alpha_s, sigma_s = self.schedule.alpha_sigma(t_next)
        x0, eps = clip_prediction(pred.x0, pred.eps, state.x, alpha_t, sigma_t, self.clip_x0)
        key, noise = fresh_noise(state)
        x = ddim_update(x0, eps, alpha_s, sigma_s, alpha_t, sigma_t, self.eta, noise)
        return advance(state, x, key)


def DDPM(schedule: Schedule) -> DDIM:  # noqa: N802 - a solver "class" by name
    """DDPM ancestral sampling (Ho et al. 2020): DDIM with ``eta = 1``, which is exactly
    the posterior step (tested against the closed form in tests/sampling/test_solvers.py)."""
    return DDIM(schedule, 1.0)


register(SolverPart("ddim", DDIM, "DDIM (eta 0: the probability-flow ODE's first-order solver)", knobs=(
    Knob("eta", number(0.0, 1.0), 0.0, flag="eta", examples=(0.0, 0.5),
         help="DDIM's eta: 0 deterministic, 1 DDPM's ancestral noise"),
    Knob("clip_x0", number(0.0, None), 0.0, flag="clip_x0", examples=(1.0, 0.2),
         help="clip x0 to [-C, C] at every step, eps recomputed (Salimans & Ho's evaluation sampler: 1; "
              "pixels only, never latents); 0: off"),)))
register(SolverPart("ddpm", DDPM, "DDPM ancestral sampling (DDIM with eta 1)"))
