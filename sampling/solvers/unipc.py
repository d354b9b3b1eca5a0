"""UniPC (Zhao et al. 2023) as diffusers' ``UniPCMultistepScheduler`` runs it: data prediction,
order 2, the B(h) of ``bh2`` (``e^{-h} - 1``) or ``bh1`` (``-h``), the corrector on every step.

With ``lambda = log(alpha / sigma)``, data predictions ``m`` and ``h = lambda_next - lambda``:

* predictor (UniP) from ``(x, t)``: ``x' = sigma'/sigma x - alpha' (e^{-h} - 1) m_t - alpha' B(h)
  rho D1`` with ``D1 = (m_prev - m_t) / r``, ``r = (lambda_prev - lambda_t) / h`` and ``rho = 1/2``
  (order 2; order 1 drops the term; the first step and the step onto ``t = 0`` are order 1);
* corrector (UniC), once the network has seen the predicted point: the previous predictor step
  redone with the new prediction, ``x = sigma/sigma_s x_s - alpha (e^{-h} - 1) m_s - alpha B(h)
  (rho_0 D1 + rho_1 (m_t - m_s))``, its ``rho`` solving UniPC's order conditions (order 1:
  ``rho = 1/2``). No extra network call.

Times may be per sample: the history is kept at the data's full shape.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from diffusion.schedules import Schedule, bcast_right
from sampling.registry import Knob, SolverPart, choice, register
from sampling.solvers.base import Model, Solver, SolverState, advance, initial_state, predict
from sampling.solvers.dpm_solver import half_logsnr


def _b_of_h(hh, variant: str):
    return jnp.expm1(hh) if variant == "bh2" else hh


@struct.dataclass
class UniPC(Solver):
    """``UniPCMultistepScheduler`` (``predict_x0``, ``solver_order=2``, ``lower_order_final``).
    State ``aux``: ``m [2, *x]`` and ``lam [2, *x]`` the last two data predictions and their
    lambdas (newest last), ``x_s`` and ``sigma_s`` the previous step's start, ``order`` its order."""

    schedule: Schedule = struct.field(pytree_node=False)
    variant: str = struct.field(pytree_node=False, default="bh2")

    def init(self, x: jax.Array, key: jax.Array) -> SolverState:
        zeros = jnp.zeros((2, *x.shape), x.dtype)
        return initial_state(x, key, aux={"m": zeros, "lam": zeros, "x_s": jnp.zeros_like(x),
                                          "sigma_s": jnp.ones_like(x), "order": jnp.zeros((), jnp.int32)})

    def _alpha_sigma(self, t, x):
        alpha, sigma = self.schedule.alpha_sigma(t)
        return (jnp.broadcast_to(bcast_right(alpha, x), x.shape), jnp.broadcast_to(bcast_right(sigma, x), x.shape))

    def step(self, state: SolverState, model: Model, t: jax.Array, t_next: jax.Array) -> SolverState:
        aux = state.aux
        pred, state = predict(model, state, state.x, t)
        m_t = pred.x0
        alpha_t, sigma_t = self._alpha_sigma(t, state.x)
        lam_t = half_logsnr(self.schedule, t, state.x)

        # corrector: redo the previous step with this prediction (not on the first step)
        m_s, m_ss, lam_s, lam_ss = aux["m"][1], aux["m"][0], aux["lam"][1], aux["lam"][0]
        h = lam_t - lam_s
        hh = -h
        phi = jnp.expm1(hh)
        b_h = _b_of_h(hh, self.variant)
        base = sigma_t / aux["sigma_s"] * aux["x_s"] - alpha_t * phi * m_s
        r = (lam_ss - lam_s) / h
        d1 = (m_ss - m_s) / r
        k1 = phi / hh - 1.0
        b1 = k1 / b_h
        b2 = (k1 / hh - 0.5) * 2.0 / b_h
        rho0 = (b1 - b2) / (1.0 - r)
        rho1 = b1 - rho0
        order2 = base - alpha_t * b_h * (rho0 * d1 + rho1 * (m_t - m_s))
        order1 = base - alpha_t * b_h * 0.5 * (m_t - m_s)
        corrected = jnp.where(aux["order"] >= 2, order2, order1)
        x = jnp.where(state.i > 0, corrected, state.x)

        # predictor from the corrected point
        alpha_n, sigma_n = self._alpha_sigma(t_next, x)
        final = sigma_n == 0.0
        lam_n = half_logsnr(self.schedule, t_next, x)
        h = jnp.where(final, 1.0, lam_n - lam_t)  # finite placeholder where the step is final
        hh = -h
        phi = jnp.expm1(hh)
        first = sigma_n / sigma_t * x - alpha_n * phi * m_t
        r = (lam_s - lam_t) / h
        second = first - alpha_n * _b_of_h(hh, self.variant) * 0.5 * (m_s - m_t) / r
        order = jnp.where(state.i == 0, 1, 2)
        x_new = jnp.where(order >= 2, second, first)
        x_new = jnp.where(final, m_t, x_new)
        order = jnp.where(jnp.all(final), 1, order)  # lower_order_final: the step onto t = 0 is order 1
        aux = {"m": jnp.stack([m_s, m_t]), "lam": jnp.stack([lam_s, lam_t]), "x_s": x, "sigma_s": sigma_t,
               "order": order.astype(jnp.int32)}
        return advance(state, x_new, aux=aux)


register(SolverPart("unipc", UniPC, "UniPC (diffusers' UniPCMultistepScheduler: order 2, data prediction, the "
                    "corrector on every step)", knobs=(
    Knob("variant", choice("bh2", "bh1"), "bh2", traced=False, flag="unipc_variant",
         help="UniPC's B(h): bh2 (e^-h - 1, diffusers' default) or bh1 (-h)"),)))
