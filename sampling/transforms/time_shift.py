"""The Time-Shift Sampler (TS-DPM, Li et al., ICLR 2024) as a transform over any solver.

Exposure bias: the sampler's state at the next grid time does not have that time's
noise level. TS-DPM picks, per sample, the training time ``tau`` in a window around
the next grid time whose expected variance is closest to the sample's own variance
(over all its elements), while the time is above a cutoff.

* ``mode="query"`` (default; the paper's algorithm as METHODS.md section 1 reconstructs
  it, which no released file does exactly; the nearest is the authors' DEIS sampler): the
  next step runs as if the current time were ``tau`` (the network is queried there), per
  sample.
* ``mode="destination"`` (the authors' released PNM samplers, ``sampler/pnm_solver.py``
  of Mingxiao-Li/TS-DPM: DDIM, DDPM, S-/F-PNDM): the network is queried at the grid
  time; ``tau``, chosen from the *current* sample's variance around the next grid time,
  replaces the step's destination; no shift on the first step and none once the next
  grid time is at or below the cutoff. The released DPM-Solver, DEIS and ADM-DDIM
  samplers each differ from this (docs/design/fidelity.md); with the ``tsdpm`` grid
  (``sampling/grids.py``) this mode is the released PNM sampler, tested against a float64
  port of it (tests/sampling/test_time_shift_reference.py).

The selection rule compares the sample's unbiased variance (``ddof = 1``, torch's
``var()``) with a target over the window's training steps ``m``::

    target_m = data_var * alpha_bar_m + 1 - alpha_bar_m

* ``data_var = 0`` (default) is the authors' rule, ``1 - alpha_bar`` (``pnm_solver.py:82``).
  It assumes the signal term ``alpha_bar Var(x0)`` is negligible: on data of per-sample
  variance ``V0`` a sample that has exactly its noise level sits at ``alpha_bar_m =
  alpha_bar_n (1 - V0)``, above the window for ``V0`` of digits or latents, so the rule
  picks the window's top edge (the authors' choice is kept; docs/design/sampling.md).
* ``data_var = V0`` (the data's mean per-sample ``ddof = 1`` variance over the same axes,
  measured on the data the model was trained on) compares with the forward marginal: an
  unbiased sample returns the window's centre.
* Where the target is the same at both ends of the window (``data_var = 1``: a unit-variance
  sample has variance 1 at every noise level), the variance says nothing and the given
  time is kept, bit for bit. With the authors' target this never happens on a window of
  two or more steps (tested on every schedule), so it leaves their rule untouched.
* ``min_snr`` (default 0: off, the authors' behaviour) shifts only where the target's
  spread across the window is at least ``min_snr`` standard errors of the sample's
  variance, ``target_centre * sqrt(2 / (D - 1))`` for ``D`` elements per sample (or
  frame): a window the estimator cannot resolve keeps the centre.

The cutoff is the authors' 0-based index. Their ``alphas_cump[i]`` is our ``alpha_bar`` at
training step ``n = i + 1`` (our ``n = 0`` is the data), so a time is above the cutoff where
``round(t T) - 1 > cutoff`` (``t_next > cut_off_value``, ``pnm_solver.py:122``): cutoff 300
does not shift at step 301. The comparison is on integer steps: a float time can sit a
hair above its step (the 10-step trailing grid's ``t = 0.9`` is ``900.00006`` steps).

``window``, ``cutoff``, ``data_var`` and ``min_snr`` are traced: the candidates are all
``T + 1`` training times under a mask, so sweeping them does not recompile. Shifted times
are ``[B]`` arrays; no Python control flow.
"""

from __future__ import annotations

import math

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


def closest_time(schedule: Schedule, variance: jax.Array, center: jax.Array, window, data_var=0.0, min_snr=0.0,
                 dof: int | None = None) -> jax.Array:
    """Training times ``n / T`` within ``|n - center * T| <= window / 2`` whose target
    ``data_var * alpha_bar + 1 - alpha_bar`` is closest to ``variance`` (module docstring).

    Args:
      schedule: the model's schedule (``T`` training steps).
      variance: ``S`` (any shape) per-sample (or per-frame) unbiased variances.
      center: ``[]`` or ``S``: the window's centre time.
      window: window width in training steps (traced).
      data_var: ``0``: the authors' ``1 - alpha_bar``; ``V0``: the forward marginal (traced).
      min_snr: the identifiability guard, ``0`` off (traced).
      dof: elements each variance is taken over (static); ``None``: no guard.

    Returns:
      ``S``: the chosen times; ``center`` itself, unchanged, where the target is flat across
      the window (a window under 2 steps, ``data_var = 1``) or the guard holds.
    """
    shape = variance.shape
    center = jnp.broadcast_to(jnp.asarray(center, jnp.float32), shape).reshape(-1)
    return _closest_time(schedule, variance.reshape(-1), center, window, data_var, min_snr, dof).reshape(shape)


def _closest_time(schedule: Schedule, variance, center, window, data_var, min_snr, dof) -> jax.Array:
    T = schedule.T
    n = jnp.arange(T + 1, dtype=jnp.float32)
    alpha_bar = schedule.alpha_bar(n / T)
    target = 1.0 - (1.0 - jnp.asarray(data_var, jnp.float32)) * alpha_bar  # [T + 1]; data_var 0: 1 - alpha_bar exactly
    c = jnp.round(jnp.broadcast_to(jnp.asarray(center, jnp.float32) * T, variance.shape))
    h = jnp.floor(jnp.asarray(window, jnp.float32) / 2.0)
    inside = jnp.abs(n[None, :] - c[:, None]) <= h
    cost = jnp.where(inside, (variance[:, None] - target[None, :]) ** 2, jnp.inf)
    tau = jnp.argmin(cost, axis=1).astype(jnp.float32)
    at = lambda m: target[jnp.clip(m, 0, T).astype(jnp.int32)]  # noqa: E731
    spread = jnp.abs(at(c + h) - at(c - h))
    se = at(c) * (math.sqrt(2.0 / (dof - 1)) if dof and dof > 1 else 0.0)
    resolved = (spread > 0) & (spread >= jnp.asarray(min_snr, jnp.float32) * se)
    return jnp.where(resolved, tau / T, center)  # not resolved: the centre as given, bit for bit


@struct.dataclass
class TimeShift(Solver):
    """Wraps a solver. State ``aux``: ``{"inner": inner aux, "shifted": [B] next query time}``.

    Attributes:
      solver: the wrapped solver.
      window: search window width in training steps; the half-width is ``window // 2``
        (the authors' PNM, DPM-Solver and ADM code; their DEIS code's ``window_size`` is a
        half-width, so its "w10" is our 20). The authors' README: 5 for F-PNDM at 100
        steps (cutoff 550), 30 for DPM-Solver at 5 (300), and 80 for their ADM DDIM at 5
        (300), where the target is ``flip(alpha_bar)`` on a cosine schedule: that 80 does
        not transfer (docs/design/fidelity.md).
      cutoff: shift only while the time (query mode: the current grid time; destination
        mode: the next one) is above it, as the authors' 0-based step index: ``round(t T)
        - 1 > cutoff`` (module docstring).
      mode: ``"query"`` or ``"destination"`` (static).
      lead: leading axes the shift is chosen over (static): 1 per sample, 2 per frame of
        a video model (its times are ``[B, F]``; a plan may set them per frame).
      data_var: ``0``: the authors' target ``1 - alpha_bar``; ``V0``: ``V0 alpha_bar + 1 -
        alpha_bar``, the forward marginal of data with per-sample variance ``V0``.
      min_snr: shift only where the window's target spread is at least this many standard
        errors of the sample variance (0: off, the authors').
    """

    solver: object
    window: jax.Array | float = 5.0
    cutoff: jax.Array | float = 550.0
    mode: str = struct.field(pytree_node=False, default="query")
    lead: int = struct.field(pytree_node=False, default=1)
    data_var: jax.Array | float = 0.0
    min_snr: jax.Array | float = 0.0

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

    def _pick(self, x: jax.Array, center: jax.Array) -> jax.Array:
        """The shifted time for each sample (or frame) of ``x``, around ``center``."""
        dof = math.prod(x.shape[self.lead:])
        return closest_time(self.schedule, sample_variance(x, self.lead), center, self.window, self.data_var,
                            self.min_snr, dof)

    def _above_cutoff(self, t: jax.Array) -> jax.Array:
        """The authors' ``index > cutoff`` with their 0-based index ``n - 1``."""
        return jnp.round(t * self.schedule.T) - 1.0 > self.cutoff

    def step(self, state: SolverState, model: Model, t: jax.Array, t_next: jax.Array) -> SolverState:
        lead = state.x.shape[:self.lead]
        t_b = jnp.broadcast_to(jnp.asarray(t, jnp.float32), lead)
        next_b = jnp.broadcast_to(jnp.asarray(t_next, jnp.float32), lead)
        if self.mode == "query":
            shifted = state.aux["shifted"]
            query = jnp.where(self._above_cutoff(t_b) & (shifted >= 0), shifted, t_b)
            inner = self._inner_step(state, model, query, next_b)
            new_shift = jnp.where(next_b > 0, self._pick(inner.x, next_b), -1.0)
        else:
            use = (state.i > 0) & self._above_cutoff(next_b)
            tau = self._pick(state.x, next_b)
            inner = self._inner_step(state, model, t_b, jnp.where(use, tau, next_b))
            new_shift = jnp.where(use, tau, -1.0)
        return inner.replace(aux={"inner": inner.aux, "shifted": new_shift})


def _build(solver, knobs: dict, ctx):
    T = solver.schedule.T
    if knobs["window"] > T or knobs["cutoff"] > T:
        raise ValueError(f"time_shift window {fmt(knobs['window'])} and cutoff {fmt(knobs['cutoff'])}: the window "
                         f"must lie in [0, T = {T}] training steps of this model's schedule, the cutoff (the "
                         f"authors' 0-based step index) in [-1, {T}]")
    return TimeShift(solver, knobs["window"], knobs["cutoff"], knobs["mode"], lead=2 if ctx.caps.frames else 1,
                     data_var=knobs["data_var"], min_snr=knobs["min_snr"])


def _tag(k: dict) -> str:
    """``ts<window>-<cutoff>`` (+ ``dest``, ``-v<data_var>``, ``-snr<min_snr>`` when not default)."""
    return (f"ts{fmt(k['window'])}-{fmt(k['cutoff'])}" + ("" if k["mode"] == "query" else "dest")
            + (f"-v{fmt(k['data_var'])}" if k["data_var"] else "")
            + (f"-snr{fmt(k['min_snr'])}" if k["min_snr"] else ""))


register(TransformPart(
    name="time_shift", wraps="solver", order=10, build=_build,
    help="the time-shift sampler (TS-DPM): WINDOW,CUTOFF, e.g. 20,300 (window in training steps, cutoff as the "
         "authors' 0-based step index)",
    knobs=(Knob("window", number(0.0), examples=(20.0, 40.0), help="search window width in training steps"),
           Knob("cutoff", number(-1.0), examples=(300.0, 550.0),
                help="shift only above this step index (the authors' 0-based index: training step - 1)"),
           Knob("mode", choice(*MODES), "query", traced=False, flag="time_shift_mode",
                help="query: the paper's algorithm; destination: the authors' released DDIM/PNDM code"),
           Knob("data_var", number(0.0), 0.0, flag="time_shift_data_var", examples=(0.0, 0.5),
                help="target data_var*alpha_bar + 1 - alpha_bar: 0 the authors' 1 - alpha_bar, V0 the data's "
                     "per-sample variance (ddof 1)"),
           Knob("min_snr", number(0.0), 0.0, flag="time_shift_min_snr", examples=(0.0, 1.0),
                help="shift only where the window's target spread is >= this many standard errors of the "
                     "sample variance (0: off, the authors')")),
    tag=_tag))
