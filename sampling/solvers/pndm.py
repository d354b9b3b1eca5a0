"""Pseudo numerical methods (Liu et al. 2022, PNDM): S-PNDM and F-PNDM.

Both move with the *transfer* ``phi(x, eps, t -> s)`` (a deterministic DDIM step driven
by a given noise estimate) and build that estimate from several network calls:

* warm start: F-PNDM takes pseudo Runge-Kutta steps (4 calls) for its first 3 steps,
  S-PNDM a pseudo improved-Euler step (2 calls) for its first step;
* then pseudo linear multistep, one call per step: S-PNDM ``(3 e_k - e_{k-1}) / 2``,
  F-PNDM ``(55 e_k - 59 e_{k-1} + 37 e_{k-2} - 9 e_{k-3}) / 24``.

The warm start is a ``lax.cond`` branch, so a multistep step really costs one call.

``plms`` is PNDM as diffusers runs it for Stable Diffusion (``PNDMScheduler`` with
``skip_prk_steps=True``, diffusers 0.42.1 ``step_plms``): an S-PNDM improved-Euler first step
(2 calls; its second noise estimate is not kept), then Adams-Bashforth on the kept
estimates with the order ramping up, ``(3 e_k - e_{k-1}) / 2``, ``(23 e_k - 16 e_{k-1} + 5
e_{k-2}) / 12``, then F-PNDM's fourth-order weights: the "warm-up ramp" of SD's sampler.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from diffusion.param import Prediction, ddim_renoise, v_from
from diffusion.schedules import Schedule, bcast_right
from sampling.registry import Knob, SolverPart, choice, register
from sampling.solvers.base import Model, Solver, SolverState, advance, initial_state, predict


def transfer(schedule: Schedule, x, eps, t, s):
    """``phi``: from ``x`` at ``t`` to time ``s`` along the noise estimate ``eps`` (DDIM, eta 0)."""
    alpha_t, sigma_t = schedule.alpha_sigma(t)
    x0 = (x - bcast_right(sigma_t, x) * eps) / bcast_right(alpha_t, x)
    return ddim_renoise(Prediction(x0=x0, eps=eps), *schedule.alpha_sigma(s))


@struct.dataclass
class PNDM(Solver):
    """``fourth_order=True``: F-PNDM; False: S-PNDM. State ``aux``: the last three network
    noise estimates ``[3, *x.shape]`` (newest last)."""

    schedule: Schedule = struct.field(pytree_node=False)
    fourth_order: bool = struct.field(pytree_node=False, default=True)

    @property
    def warm_steps(self) -> int:
        return 3 if self.fourth_order else 1

    def network_calls(self, steps: int) -> int:
        """A warm-start step calls the network 4 times (F-PNDM's Runge-Kutta) or 2 times
        (S-PNDM's improved Euler), a multistep step once."""
        extra = 3 if self.fourth_order else 1
        return steps + extra * min(self.warm_steps, steps)

    def init(self, x: jax.Array, key: jax.Array) -> SolverState:
        return initial_state(x, key, aux=jnp.zeros((3, *x.shape), x.dtype))

    def _runge_kutta(self, model: Model, state: SolverState, t, s):
        x, mid = state.x, 0.5 * (t + s)
        p1, state = predict(model, state, x, t)
        p2, state = predict(model, state, transfer(self.schedule, x, p1.eps, t, mid), mid)
        p3, state = predict(model, state, transfer(self.schedule, x, p2.eps, t, mid), mid)
        p4, state = predict(model, state, transfer(self.schedule, x, p3.eps, t, s), s)
        return (p1.eps + 2.0 * p2.eps + 2.0 * p3.eps + p4.eps) / 6.0, p1.eps, state.cache

    def _improved_euler(self, model: Model, state: SolverState, t, s):
        p1, state = predict(model, state, state.x, t)
        p2, state = predict(model, state, transfer(self.schedule, state.x, p1.eps, t, s), s)
        return 0.5 * (p1.eps + p2.eps), p1.eps, state.cache

    def _multistep(self, model: Model, state: SolverState, t):
        pred, state = predict(model, state, state.x, t)
        e, history = pred.eps, state.aux
        if self.fourth_order:
            combined = (55.0 * e - 59.0 * history[2] + 37.0 * history[1] - 9.0 * history[0]) / 24.0
        else:
            combined = 0.5 * (3.0 * e - history[2])
        return combined, e, state.cache

    def step(self, state: SolverState, model: Model, t: jax.Array, t_next: jax.Array) -> SolverState:
        warm = self._runge_kutta if self.fourth_order else self._improved_euler
        eps, newest, cache = jax.lax.cond(
            state.i < self.warm_steps,
            lambda: warm(model, state, t, t_next),
            lambda: self._multistep(model, state, t),
        )
        history = jnp.concatenate([state.aux[1:], newest[None]], axis=0)
        state = state.replace(cache=cache)
        return advance(state, transfer(self.schedule, state.x, eps, t, t_next), aux=history)


@struct.dataclass
class PLMS(Solver):
    """diffusers' ``PNDMScheduler`` with ``skip_prk_steps`` (Stable Diffusion's stock sampler).
    State ``aux``: the last three kept estimates ``[3, *x.shape]`` (newest last).

    diffusers combines the network's raw outputs and converts the combination to a noise
    estimate at the current ``(x, t)``: ``combine="v"`` does that for a v-prediction network
    (static; the import sets it), ``"eps"`` combines noise estimates."""

    schedule: Schedule = struct.field(pytree_node=False)
    combine: str = struct.field(pytree_node=False, default="eps")

    def _kept(self, pred, t):
        return pred.eps if self.combine == "eps" else v_from(pred, *self.schedule.alpha_sigma(t))

    def _as_eps(self, combined, x, t):
        if self.combine == "eps":
            return combined
        alpha, sigma = self.schedule.alpha_sigma(t)
        return bcast_right(sigma, x) * x + bcast_right(alpha, x) * combined

    def network_calls(self, steps: int) -> int:
        """The first step calls the network twice (its improved-Euler correction)."""
        return steps + 1

    def init(self, x: jax.Array, key: jax.Array) -> SolverState:
        return initial_state(x, key, aux=jnp.zeros((3, *x.shape), x.dtype))

    def _multistep(self, model: Model, state: SolverState, t):
        pred, state = predict(model, state, state.x, t)
        e, h = self._kept(pred, t), state.aux
        ab2 = 0.5 * (3.0 * e - h[2])
        ab3 = (23.0 * e - 16.0 * h[2] + 5.0 * h[1]) / 12.0
        ab4 = (55.0 * e - 59.0 * h[2] + 37.0 * h[1] - 9.0 * h[0]) / 24.0
        combined = jnp.where(state.i == 1, ab2, jnp.where(state.i == 2, ab3, ab4))
        return self._as_eps(combined, state.x, t), e, state.cache

    def _first(self, model: Model, state: SolverState, t, s):
        p1, state = predict(model, state, state.x, t)
        p2, state = predict(model, state, transfer(self.schedule, state.x, p1.eps, t, s), s)
        e1, e2 = self._kept(p1, t), self._kept(p2, s)
        return self._as_eps(0.5 * (e1 + e2), state.x, t), e1, state.cache

    def step(self, state: SolverState, model: Model, t: jax.Array, t_next: jax.Array) -> SolverState:
        eps, kept, cache = jax.lax.cond(state.i == 0, lambda: self._first(model, state, t, t_next),
                                        lambda: self._multistep(model, state, t))
        history = jnp.concatenate([state.aux[1:], kept[None]], axis=0)
        state = state.replace(cache=cache)
        return advance(state, transfer(self.schedule, state.x, eps, t, t_next), aux=history)


register(SolverPart("plms", PLMS, "PLMS: diffusers' PNDMScheduler as Stable Diffusion runs it (skip_prk_steps: an "
                    "improved-Euler first step, then Adams-Bashforth of order 2, 3, 4)", knobs=(
    Knob("combine", choice("eps", "v"), "eps", traced=False, flag="plms_combine",
         help="what the multistep combines: eps, or v as diffusers does for a v-prediction network (the import "
              "sets it)"),)))
register(SolverPart("spndm", lambda schedule: PNDM(schedule, fourth_order=False),
                    "S-PNDM: improved-Euler warm start, second-order pseudo linear multistep"))
register(SolverPart("fpndm", lambda schedule: PNDM(schedule, fourth_order=True),
                    "F-PNDM: pseudo Runge-Kutta warm start (3 steps), fourth-order pseudo linear multistep"))
