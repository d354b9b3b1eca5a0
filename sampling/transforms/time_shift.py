"""The Time-Shift Sampler (TS-DPM, Li et al., ICLR 2024) as a transform over any solver.

Exposure bias: the sampler's state at the next grid time does not have that time's
noise level. TS-DPM picks, per sample, the training time ``tau`` in a window around
the next grid time whose noise variance ``1 - alpha_bar_tau`` is closest to the sample's
own variance (over all its elements), while the time is above a cutoff.

* ``mode="query"`` (default; the paper's algorithm): the next step runs as if the
  current time were ``tau`` (the network is queried there), per sample.
* ``mode="destination"`` (the authors' released PNDM/DDIM code): the network is queried
  at the grid time; ``tau``, chosen from the *current* sample's variance around the
  next grid time, replaces the step's destination; no shift on the first step and none
  once the next grid time is at or below the cutoff.

``window`` (width in training steps) and ``cutoff`` (a training step) are traced: the
candidates are all ``T + 1`` training times under a mask, so sweeping them does not
recompile. Shifted times are ``[B]`` arrays; no Python control flow.

Two choices, the same as the authors' released code (and tested against an independent
float64 re-implementation, tests/sampling/test_time_shift_reference.py):

* the per-sample variance is the unbiased one (``ddof = 1``, torch's ``var()``): for a
  sample of pure noise at time ``tau`` it is ``1 - alpha_bar_tau`` on average, where the
  ``ddof = 0`` estimate is low by ``1/D`` (1.6% on 8x8 digits, a few training steps);
* the cutoff compares training steps, ``round(t T) > cutoff``: a float time can sit a
  hair above its step (the 10-step trailing grid's ``t = 0.9`` is ``900.00006`` steps),
  which must not count as above a cutoff of 900.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from diffusion.schedules import Schedule
from sampling.registry import Knob, TransformPart, choice, fmt, number, register
from sampling.solvers.base import Model, Solver, SolverState

MODES = ("query", "destination")


def sample_variance(x: jax.Array, lead: int = 1) -> jax.Array:
    """Unbiased variance (``ddof = 1``) over all but the ``lead`` leading axes: ``[B]`` per
    sample (``lead = 1``), ``[B, F]`` per frame of a video ``[B, F, H, W, C]`` (``lead = 2``)."""
    return jnp.var(x.reshape(*x.shape[:lead], -1), axis=-1, ddof=1)


def closest_time(schedule: Schedule, variance: jax.Array, center: jax.Array, window) -> jax.Array:
    """Training times ``n / T`` within ``|n - center * T| <= window / 2`` whose
    ``1 - alpha_bar`` is closest to ``variance`` (any shape ``S``; ``center``: ``[]`` or ``S``);
    returns shape ``S``."""
    shape = variance.shape
    center = jnp.broadcast_to(jnp.asarray(center, jnp.float32), shape).reshape(-1)
    return _closest_time(schedule, variance.reshape(-1), center, window).reshape(shape)


def _closest_time(schedule: Schedule, variance: jax.Array, center: jax.Array, window) -> jax.Array:
    T = schedule.T
    n = jnp.arange(T + 1, dtype=jnp.float32)
    noise_var = 1.0 - schedule.alpha_bar(n / T)  # [T + 1]
    c = jnp.round(jnp.broadcast_to(jnp.asarray(center, jnp.float32) * T, variance.shape))
    inside = jnp.abs(n[None, :] - c[:, None]) <= jnp.floor(jnp.asarray(window, jnp.float32) / 2.0)
    cost = jnp.where(inside, (variance[:, None] - noise_var[None, :]) ** 2, jnp.inf)
    return jnp.argmin(cost, axis=1).astype(jnp.float32) / T


@struct.dataclass
class TimeShift(Solver):
    """Wraps a solver. State ``aux``: ``{"inner": inner aux, "shifted": [B] next query time}``.

    Attributes:
      solver: the wrapped solver.
      window: search window width in training steps (the authors: 5 for F-PNDM at 100
        steps, 30 for DPM-Solver at 5, 80 for DDIM at 5).
      cutoff: shift only while the grid time (in training steps) is above it (550 / 300).
      mode: ``"query"`` or ``"destination"`` (static).
      lead: leading axes the shift is chosen over (static): 1 per sample, 2 per frame of
        a video model (its times are ``[B, F]``; a plan may set them per frame).
    """

    solver: object
    window: jax.Array | float = 5.0
    cutoff: jax.Array | float = 550.0
    mode: str = struct.field(pytree_node=False, default="query")
    lead: int = struct.field(pytree_node=False, default=1)

    @property
    def schedule(self) -> Schedule:
        return self.solver.schedule

    def init(self, x: jax.Array, key: jax.Array) -> SolverState:
        if self.mode not in MODES:
            raise ValueError(f"unknown time-shift mode {self.mode!r}; expected one of {MODES}")
        inner = self.solver.init(x, key)
        shifted = jnp.full(x.shape[:self.lead], -1.0, jnp.float32)  # < 0: no shift chosen yet
        return inner.replace(aux={"inner": inner.aux, "shifted": shifted})

    def network_calls(self, steps: int) -> int:
        return self.solver.network_calls(steps)

    def _inner_step(self, state, model, t, t_next):
        return self.solver.step(state.replace(aux=state.aux["inner"]), model, t, t_next)

    def step(self, state: SolverState, model: Model, t: jax.Array, t_next: jax.Array) -> SolverState:
        T = self.schedule.T
        lead = state.x.shape[:self.lead]
        t_b = jnp.broadcast_to(jnp.asarray(t, jnp.float32), lead)
        next_b = jnp.broadcast_to(jnp.asarray(t_next, jnp.float32), lead)
        if self.mode == "query":
            shifted = state.aux["shifted"]
            query = jnp.where((jnp.round(t_b * T) > self.cutoff) & (shifted >= 0), shifted, t_b)
            inner = self._inner_step(state, model, query, next_b)
            tau = closest_time(self.schedule, sample_variance(inner.x, self.lead), next_b, self.window)
            new_shift = jnp.where(next_b > 0, tau, -1.0)
        else:
            tau = closest_time(self.schedule, sample_variance(state.x, self.lead), next_b, self.window)
            use = (state.i > 0) & (jnp.round(next_b * T) > self.cutoff)
            inner = self._inner_step(state, model, t_b, jnp.where(use, tau, next_b))
            new_shift = jnp.where(use, tau, -1.0)
        return inner.replace(aux={"inner": inner.aux, "shifted": new_shift})


def _build(solver, knobs: dict, ctx):
    T = solver.schedule.T
    if knobs["window"] > T or knobs["cutoff"] > T:
        raise ValueError(f"time_shift window {fmt(knobs['window'])} and cutoff {fmt(knobs['cutoff'])} are training "
                         f"steps: both must lie in [0, T = {T}] of this model's schedule")
    return TimeShift(solver, knobs["window"], knobs["cutoff"], knobs["mode"], lead=2 if ctx.caps.frames else 1)


register(TransformPart(
    name="time_shift", wraps="solver", order=10, build=_build,
    help="the time-shift sampler (TS-DPM): WINDOW,CUTOFF in training steps, e.g. 80,300",
    knobs=(Knob("window", number(0.0), examples=(20.0, 40.0), help="search window width in training steps"),
           Knob("cutoff", number(0.0), examples=(300.0, 550.0), help="shift only above this training step"),
           Knob("mode", choice(*MODES), "query", traced=False, flag="time_shift_mode",
                help="query: the paper's algorithm; destination: the authors' released code")),
    tag=lambda k: f"ts{fmt(k['window'])}-{fmt(k['cutoff'])}" + ("" if k["mode"] == "query" else "dest")))
