"""Per-frame sampling plans for video (FVDM, docs/design/video.md) as a solver wrapper.

The sampling loop walks one grid; :class:`FramePlan` turns each step into per-frame times
``[B, F]`` for the wrapped solver, whose updates are elementwise in time:

* given frames (``given [B, F]`` bool, values ``x_given [B, F, ...]``) sit at ``t = 0``:
  the network sees ``x_given`` there, their prediction is ``x0 = x_given``, and the
  state's given frames are reset to ``x_given`` after every step, so the sample holds them
  exactly. Image-to-video gives frame 0, interpolation the first and the last;
* the pyramid plan lags frame ``i`` by ``lag * i`` grid steps: its times are
  ``grid[clip(k - lag * i, 0, N)]`` at loop step ``k``, so the loop needs ``N + lag (F - 1)``
  steps (:func:`pyramid_loop_grid`); a frame whose two times are equal is left as it is.

``given``, ``x_given`` and ``lag`` are traced: changing them does not recompile (the
loop's length is static; a pyramid loop sized for ``max_lag`` runs any ``lag <= max_lag``).
A pyramid needs a one-step solver: multistep histories ramp their order per run, not per
frame.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from diffusion.param import Prediction
from diffusion.schedules import Schedule, bcast_right
from sampling.solvers.base import Model, Solver, SolverState

ONE_STEP_SOLVERS = ("DDIM",)


@struct.dataclass
class FramePlan(Solver):
    """Wraps ``solver`` for videos ``x [B, F, H, W, C]``.

    Attributes:
      solver: the wrapped solver.
      given: ``[B, F]`` (or ``[F]``) bool, the frames held clean at ``t = 0``.
      x_given: ``[B, F, ...]`` their values (entries of other frames are ignored).
      grid: the sampler's own time grid ``[N + 1]`` (the pyramid indexes it).
      lag: grid steps by which frame ``i`` trails frame ``i - 1`` (0: synchronous).
    """

    solver: object
    given: jax.Array
    x_given: jax.Array
    grid: jax.Array
    lag: jax.Array | int = 0

    @property
    def schedule(self) -> Schedule:
        return self.solver.schedule

    def network_calls(self, steps: int) -> int:
        return self.solver.network_calls(steps)

    def _mask(self, x: jax.Array) -> jax.Array:
        given = jnp.broadcast_to(jnp.asarray(self.given, bool), x.shape[:2])
        return jnp.broadcast_to(bcast_right(given, x), x.shape)

    def hold(self, x: jax.Array) -> jax.Array:
        """``x`` with the given frames replaced by ``x_given``."""
        return jnp.where(self._mask(x), jnp.asarray(self.x_given, x.dtype), x)

    def frame_times(self, k: jax.Array, shape: tuple[int, int]) -> tuple[jax.Array, jax.Array]:
        """``(t, t_next)`` ``[B, F]`` of loop step ``k``: the grid lagged per frame, given
        frames at 0."""
        n = self.grid.shape[0] - 1
        offset = jnp.asarray(self.lag, jnp.int32) * jnp.arange(shape[1])
        at = lambda i: jnp.broadcast_to(self.grid[jnp.clip(i - offset, 0, n)], shape)  # noqa: E731
        given = jnp.broadcast_to(jnp.asarray(self.given, bool), shape)
        return jnp.where(given, 0.0, at(k)), jnp.where(given, 0.0, at(k + 1))

    def init(self, x: jax.Array, key: jax.Array) -> SolverState:
        if x.ndim < 3:
            raise ValueError(f"a frame plan samples videos [B, F, ...]; got x of shape {x.shape}")
        return self.solver.init(self.hold(x), key)

    def step(self, state: SolverState, model: Model, t: jax.Array, t_next: jax.Array) -> SolverState:
        del t, t_next  # the plan's own per-frame times replace the loop's
        x = state.x
        t_f, next_f = self.frame_times(state.i, x.shape[:2])
        mask = self._mask(x)
        x_given = jnp.asarray(self.x_given, x.dtype)

        def planned(x_in, t_in, cache):
            pred, cache = model(jnp.where(mask, x_given, x_in), t_in, cache)
            return Prediction(x0=jnp.where(mask, x_given, pred.x0), eps=jnp.where(mask, 0.0, pred.eps)), cache

        new = self.solver.step(state, planned, t_f, next_f)
        still = jnp.broadcast_to(bcast_right(t_f == next_f, x), x.shape)  # given, finished or not started
        return new.replace(x=self.hold(jnp.where(still, x, new.x)))


def pyramid_loop_grid(grid: jax.Array, frames: int, max_lag: int) -> jax.Array:
    """The loop's grid for a pyramid plan: ``grid`` padded with zeros to ``N + max_lag (F - 1)``
    steps (the plan's :meth:`FramePlan.frame_times` give the real times)."""
    return jnp.concatenate([grid, jnp.zeros((max_lag * (frames - 1),), grid.dtype)])


def check_pyramid_solver(solver, lag: int) -> None:
    """A pyramid (``lag > 0``) needs a one-step solver: a clear error otherwise."""
    name = type(solver).__name__
    if lag > 0 and name not in ONE_STEP_SOLVERS:
        raise ValueError(f"the pyramid plan needs a one-step solver ({', '.join(ONE_STEP_SOLVERS).lower()}); "
                         f"{name} keeps a multistep history whose order ramps per run, not per frame")
