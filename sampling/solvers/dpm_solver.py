"""Multistep DPM-Solver++ (Lu et al. 2022) in data prediction: 2M and 3M.

With ``lambda = log(alpha / sigma)``, ``h = lambda_s - lambda_t`` and data predictions
``m0, m1, m2`` at the current and the two previous times:

* order 1 (= DDIM): ``x_s = (sigma_s / sigma_t) x - alpha_s (e^{-h} - 1) m0``;
* order 2 (2M): adds ``- alpha_s (e^{-h} - 1) / 2 * D1`` with ``D1 = (m0 - m1) / r0``,
  ``r0 = h_0 / h``, ``h_0 = lambda_t - lambda_prev``;
* order 3 (3M): ``- alpha_s (e^{-h} - 1) D0 + alpha_s ((e^{-h} - 1) / h + 1) D1
  - alpha_s ((e^{-h} - 1 + h) / h^2 - 1/2) D2`` with the divided differences of
  DPM-Solver++'s Algorithm (also diffusers' ``multistep_dpm_solver_third_order_update``).

The order ramps up as history accumulates (step 0: 1, step 1: 2, ...), and the last
step onto ``t = 0`` is first order (it returns ``m0``). Times may be per sample: the
previous log-SNRs are kept at the data's full shape.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from diffusion.schedules import Schedule, bcast_right
from sampling.registry import SolverPart, register
from sampling.solvers.base import Model, Solver, SolverState, advance, initial_state, predict


def half_logsnr(schedule: Schedule, t, like):
    """``lambda(t) = log(alpha / sigma)`` right-broadcast to the shape of ``like``."""
    return jnp.broadcast_to(bcast_right(0.5 * schedule.logsnr(t), like), like.shape)


@struct.dataclass
class DPMSolverPP(Solver):
    """Multistep DPM-Solver++ of ``order`` 2 or 3 (static). State ``aux``:
    ``{"x0": [2, *x.shape] previous data predictions, "lam": [2, *x.shape] their lambdas}``
    (index 1 = the most recent)."""

    schedule: Schedule = struct.field(pytree_node=False)
    order: int = struct.field(pytree_node=False, default=2)

    def init(self, x: jax.Array, key: jax.Array) -> SolverState:
        if self.order not in (2, 3):
            raise ValueError(f"DPM-Solver++ order must be 2 or 3, got {self.order}")
        zeros = jnp.zeros((2, *x.shape), x.dtype)
        return initial_state(x, key, aux={"x0": zeros, "lam": zeros})

    def step(self, state: SolverState, model: Model, t: jax.Array, t_next: jax.Array) -> SolverState:
        x = state.x
        pred, state = predict(model, state, x, t)
        m0 = pred.x0
        m1, m2 = state.aux["x0"][1], state.aux["x0"][0]
        lam_t, lam_s = half_logsnr(self.schedule, t, x), half_logsnr(self.schedule, t_next, x)
        lam_1, lam_2 = state.aux["lam"][1], state.aux["lam"][0]
        alpha_t, sigma_t = self.schedule.alpha_sigma(t)
        alpha_s, sigma_s = self.schedule.alpha_sigma(t_next)
        alpha_s = bcast_right(alpha_s, x)
        ratio = bcast_right(sigma_s / sigma_t, x)
        final = jnp.broadcast_to(bcast_right(sigma_s, x) == 0.0, x.shape)  # onto t = 0

        h = jnp.where(final, 1.0, lam_s - lam_t)  # finite placeholder where the step is final
        phi = jnp.expm1(-h)  # e^{-h} - 1
        x1 = ratio * x - alpha_s * phi * m0
        x1 = jnp.where(final, m0, x1)

        h0 = lam_t - lam_1
        r0 = h0 / h
        d1_0 = (m0 - m1) / r0
        x2 = x1 - 0.5 * alpha_s * phi * d1_0
        order = jnp.minimum(state.i + 1, self.order)
        x_new = jnp.where(order >= 2, x2, x1)
        if self.order == 3:
            r1 = (lam_1 - lam_2) / h
            d1_1 = (m1 - m2) / r1
            d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
            d2 = (d1_0 - d1_1) / (r0 + r1)
            x3 = x1 + alpha_s * (phi / h + 1.0) * d1 - alpha_s * ((phi + h) / h**2 - 0.5) * d2
            x_new = jnp.where(order >= 3, x3, x_new)
        x_new = jnp.where(final, m0, x_new)
        aux = {"x0": jnp.stack([m1, m0]), "lam": jnp.stack([lam_1, lam_t])}
        return advance(state, x_new, aux=aux)


register(SolverPart("dpmpp2m", lambda schedule: DPMSolverPP(schedule, order=2), "multistep DPM-Solver++ 2M"))
register(SolverPart("dpmpp3m", lambda schedule: DPMSolverPP(schedule, order=3), "multistep DPM-Solver++ 3M"))
