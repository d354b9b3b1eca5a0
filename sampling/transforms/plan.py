"""Per-frame sampling plans for video (FVDM, docs/design/video.md) as a solver wrapper.

The sampling loop walks one grid; :class:`FramePlan` turns each step into per-frame times
``[B, F]`` for the wrapped solver, whose updates are elementwise in time:

* given frames (``given [B, F]`` bool, values ``x_given [B, F, ...]``) start as ``x_given``
  and sit at the reference's first noise level ``t = 1 / T`` (FVDM@9373f998's index 0,
  ``alpha_bar = 1 - beta_1``: ``gaussian_diffusion.py:1118, 1467``; a time training draws),
  not at the clean ``t = 0``, which training never draws. ``update`` says how they evolve:

  - ``"ddim"`` (default, the reference): the solver steps them like every frame, from
    ``1 / T`` to ``0`` at every grid step, so DDIM overwrites each with the model's ``x0``
    estimate from ``(x, 1 / T)`` (``gaussian_diffusion.py:776-798`` with the respaced
    chain's ``alpha_bar_prev = 1``); they are never reset to ``x_given``. Needs a one-step
    solver;
  - ``"clamp"`` (Kairos before issue 26, a declared variant): the network sees ``x_given``
    there, their prediction is ``x0 = x_given``, and the state's given frames are reset to
    ``x_given`` after every step, so the sample holds them exactly.

  Image-to-video gives frame 0, interpolation the first and the last;
* no network call sees a time below ``t_min`` (default ``1 / T``): frames at ``t = 0``
  (a pyramid's finished frames) are fed at ``1 / T``;
* the pyramid plan lags frame ``i`` by ``lag * i`` grid steps: its times are
  ``grid[clip(k - lag * i, 0, N)]`` at loop step ``k``, so the loop needs ``N + lag (F - 1)``
  steps (:func:`pyramid_loop_grid`); a frame whose two times are equal is left as it is.

``given``, ``x_given``, ``given_time`` and ``lag`` are traced: changing them does not
recompile (the loop's length is static; a pyramid loop sized for ``max_lag`` runs any
``lag <= max_lag``). A pyramid, and given frames under ``update="ddim"``, need a one-step
solver: multistep histories ramp their order per run, not per frame.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from diffusion.param import Prediction
from diffusion.schedules import Schedule, bcast_right
from sampling.registry import Knob, TransformPart, choice, integer, register
from sampling.solvers.base import Model, Solver, SolverState

ONE_STEP_SOLVERS = ("DDIM",)
UPDATES = ("ddim", "clamp")  # how given frames evolve: the reference's DDIM re-estimate, or held exactly


@struct.dataclass
class FramePlan(Solver):
    """Wraps ``solver`` for videos ``x [B, F, H, W, C]``.

    Attributes:
      solver: the wrapped solver.
      given: ``[B, F]`` (or ``[F]``) bool, the given frames.
      x_given: ``[B, F, ...]`` their values (entries of other frames are ignored).
      grid: the sampler's own time grid ``[N + 1]`` (the pyramid indexes it).
      lag: grid steps by which frame ``i`` trails frame ``i - 1`` (0: synchronous).
      replacement: the "replacement" trick instead (static): every frame at the grid time,
        the given frames replaced by ``x_given`` noised to that time (fresh noise each step)
        before each network call and after each step; exact ``x_given`` at ``t = 0``. The
        baseline for a model never trained with per-frame times.
      given_time: the time of the given frames (traced); None: ``1 / T``, the reference's
        index 0. ``0`` is Kairos before issue 26 (clean, a time training never draws).
      update: ``"ddim"`` (the reference: the solver re-estimates the given frames every
        step) or ``"clamp"`` (held at ``x_given`` exactly); static.
      t_min: the least time any network call sees (static); None: ``1 / T``. ``0`` with
        ``given_time = 0`` reproduces Kairos before issue 26 bit for bit.
    """

    solver: object
    given: jax.Array
    x_given: jax.Array
    grid: jax.Array
    lag: jax.Array | int = 0
    replacement: bool = struct.field(pytree_node=False, default=False)
    given_time: jax.Array | float | None = None
    update: str = struct.field(pytree_node=False, default="ddim")
    t_min: float | None = struct.field(pytree_node=False, default=None)

    @property
    def schedule(self) -> Schedule:
        return self.solver.schedule

    @property
    def first_time(self) -> float:
        """``1 / T``: the reference's first noise level (its index 0)."""
        return 1.0 / self.schedule.T

    def _given_time(self) -> jax.Array:
        return jnp.asarray(self.first_time if self.given_time is None else self.given_time, jnp.float32)

    def _t_min(self) -> float:
        return self.first_time if self.t_min is None else float(self.t_min)

    def network_calls(self, steps: int) -> int:
        return self.solver.network_calls(steps)

    def _mask(self, x: jax.Array) -> jax.Array:
        given = jnp.broadcast_to(jnp.asarray(self.given, bool), x.shape[:2])
        return jnp.broadcast_to(bcast_right(given, x), x.shape)

    def hold(self, x: jax.Array) -> jax.Array:
        """``x`` with the given frames replaced by ``x_given``."""
        return jnp.where(self._mask(x), jnp.asarray(self.x_given, x.dtype), x)

    def frame_times(self, k: jax.Array, shape: tuple[int, int]) -> tuple[jax.Array, jax.Array]:
        """``(t, t_next)`` ``[B, F]`` of loop step ``k``: the grid lagged per frame; given
        frames at ``given_time``, stepping to ``0`` under ``update="ddim"`` (the reference's
        spaced index 0 -> ``alpha_bar_prev = 1``), staying put under ``"clamp"``."""
        if self.update not in UPDATES:
            raise ValueError(f"unknown given-frame update {self.update!r}; expected one of {', '.join(UPDATES)}")
        n = self.grid.shape[0] - 1
        offset = jnp.asarray(self.lag, jnp.int32) * jnp.arange(shape[1])
        at = lambda i: jnp.broadcast_to(self.grid[jnp.clip(i - offset, 0, n)], shape)  # noqa: E731
        given = jnp.broadcast_to(jnp.asarray(self.given, bool), shape)
        t_given = self._given_time()
        t_next_given = jnp.zeros_like(t_given) if self.update == "ddim" else t_given
        return jnp.where(given, t_given, at(k)), jnp.where(given, t_next_given, at(k + 1))

    def init(self, x: jax.Array, key: jax.Array) -> SolverState:
        if x.ndim < 3:
            raise ValueError(f"a frame plan samples videos [B, F, ...]; got x of shape {x.shape}")
        return self.solver.init(x if self.replacement else self.hold(x), key)

    def _noised(self, x: jax.Array, t: jax.Array, key: jax.Array) -> jax.Array:
        """``x`` with the given frames replaced by ``x_given`` noised to time ``t`` (``[]``)."""
        alpha, sigma = self.schedule.alpha_sigma(jnp.asarray(t, jnp.float32))
        clean = jnp.asarray(self.x_given, x.dtype)
        noisy = jnp.where(jnp.asarray(t) > 0, alpha * clean + sigma * jax.random.normal(key, x.shape, x.dtype), clean)
        return jnp.where(self._mask(x), noisy, x)

    def _replacement_step(self, state: SolverState, model: Model) -> SolverState:
        n = self.grid.shape[0] - 1
        k = jnp.clip(state.i, 0, n - 1)
        t, t_next = self.grid[k], self.grid[k + 1]
        keys = jax.random.split(jax.random.fold_in(jax.random.fold_in(state.key, 0x5EED), state.i))
        new = self.solver.step(state.replace(x=self._noised(state.x, t, keys[0])), model, t, t_next)
        return new.replace(x=self._noised(new.x, t_next, keys[1]))

    def step(self, state: SolverState, model: Model, t: jax.Array, t_next: jax.Array) -> SolverState:
        del t, t_next  # the plan's own per-frame times replace the loop's
        if self.replacement:
            return self._replacement_step(state, model)
        x = state.x
        t_f, next_f = self.frame_times(state.i, x.shape[:2])
        mask = self._mask(x)
        x_given = jnp.asarray(self.x_given, x.dtype)

        t_min = self._t_min()

        def planned(x_in, t_in, cache):
            t_net = jnp.maximum(t_in, t_min)  # no network call below 1 / T (given, finished frames)
            if self.update == "ddim":  # the reference: the given frames are the solver's like any other
                return model(x_in, t_net, cache)
            pred, cache = model(jnp.where(mask, x_given, x_in), t_net, cache)
            return Prediction(x0=jnp.where(mask, x_given, pred.x0), eps=jnp.where(mask, 0.0, pred.eps)), cache

        new = self.solver.step(state, planned, t_f, next_f)
        still = jnp.broadcast_to(bcast_right(t_f == next_f, x), x.shape)  # clamped, finished or not started
        out = jnp.where(still, x, new.x)
        return new.replace(x=out if self.update == "ddim" else self.hold(out))


def pyramid_loop_grid(grid: jax.Array, frames: int, max_lag: int) -> jax.Array:
    """The loop's grid for a pyramid plan: ``grid`` padded with zeros to ``N + max_lag (F - 1)``
    steps (the plan's :meth:`FramePlan.frame_times` give the real times)."""
    return jnp.concatenate([grid, jnp.zeros((max_lag * (frames - 1),), grid.dtype)])


def base_solver(solver):
    """The innermost solver under any solver wrappers (``.solver`` attributes)."""
    while hasattr(solver, "solver"):
        solver = solver.solver
    return solver


def check_pyramid_solver(solver, lag: int) -> None:
    """A pyramid (``lag > 0``) needs a one-step base solver: a clear error otherwise."""
    name = type(base_solver(solver)).__name__
    if lag > 0 and name not in ONE_STEP_SOLVERS:
        raise ValueError(f"the pyramid plan needs a one-step solver ({', '.join(ONE_STEP_SOLVERS).lower()}); "
                         f"{name} keeps a multistep history whose order ramps per run, not per frame")


def check_update_solver(solver, update: str, gives_frames: bool) -> None:
    """Given frames under ``update="ddim"`` step from ``1 / T`` to ``0`` at every grid step:
    a one-step base solver only (a clear error otherwise)."""
    name = type(base_solver(solver)).__name__
    if gives_frames and update == "ddim" and name not in ONE_STEP_SOLVERS:
        raise ValueError(f"--given_update ddim (the reference's: DDIM re-estimates each given frame from t = 1/T "
                         f"every step) needs a one-step solver ({', '.join(ONE_STEP_SOLVERS).lower()}); {name} keeps "
                         "a multistep history: use --given_update clamp (given frames held exactly) with it")


# ------------------------------------------------------------------------------------------
# The registered part: --plan sync | i2v | interp | long:LENGTH | pyramid:LAG | replace

PLANS = ("sync", "i2v", "interp", "long", "pyramid", "replace")


def parse_given_frames(text) -> tuple[int, ...] | None:
    """``"0"``, ``"0,15"`` (``/`` for ``,`` in a spec) -> sorted frame indices; ``"default"``
    -> None (the plan's own: i2v frame 0, interpolation the first and the last)."""
    text = str(text).strip().replace("/", ",")
    if text in ("default", ""):
        return None
    try:
        frames = sorted({int(f) for f in text.split(",")})
    except ValueError:
        raise ValueError(f"expected frame indices like 0 or 0,15, got {text!r}") from None
    if frames and frames[0] < 0:
        raise ValueError(f"frame indices count from 0, got {frames[0]}")
    return tuple(frames)


def format_given_frames(frames) -> str:
    return "default" if frames is None else ",".join(str(f) for f in frames)


def _parse_plan(text: str) -> dict:
    kind, _, arg = text.partition(":")
    kind = kind.strip()
    if kind not in PLANS:
        raise ValueError(f"unknown plan {kind!r}")
    if kind in ("long", "pyramid"):
        if not arg:
            raise ValueError(f"{kind} needs a number: {kind}:{'64' if kind == 'long' else '2'}")
        value = integer(1)(arg)
        return {"kind": kind, "length": value if kind == "long" else 0, "lag": value if kind == "pyramid" else 0}
    if arg:
        raise ValueError(f"{kind} takes no value, got {arg!r}")
    return {"kind": kind, "length": 0, "lag": 0}


def _format_plan(knobs: dict) -> str:
    arg = {"long": knobs["length"], "pyramid": knobs["lag"]}.get(knobs["kind"])
    return knobs["kind"] + ("" if arg is None else f":{arg}")


def given_frames(knobs: dict, frames: int) -> tuple[int, ...]:
    """The frames a plan gives (of the first window for long video): the ``given_frames``
    knob, or the plan's default."""
    chosen = parse_given_frames(knobs["given_frames"])
    if chosen is not None:
        return chosen
    return {"i2v": (0,), "replace": (0,), "interp": (0, frames - 1)}.get(knobs["kind"], ())


def _check(knobs: dict, frames: int | None) -> None:
    kind = knobs["kind"]
    if frames is None:
        raise ValueError(f"the {kind} plan samples videos, and this model makes images: use --plan off")
    given = given_frames(knobs, frames)
    if given and given[-1] >= frames:
        raise ValueError(f"--given_frames {format_given_frames(given)}: frame {given[-1]} is outside the model's "
                         f"{frames}-frame video (frames 0..{frames - 1})")
    if kind in ("i2v", "interp", "replace") and not given:
        raise ValueError(f"the {kind} plan needs at least one given frame")
    if kind == "interp" and len(given) < 2:
        raise ValueError(f"the interp plan fills the frames between given ones, and --given_frames "
                         f"{format_given_frames(given)} gives one frame: give two or more (e.g. 0,{frames - 1}), "
                         "or use --plan i2v")
    if len(given) == frames:
        raise ValueError(f"--given_frames gives all {frames} frames: nothing is left to generate")
    if kind == "long" and knobs["length"] <= frames:
        raise ValueError(f"long:{knobs['length']} is no longer than the model's {frames}-frame window: "
                         f"ask for more than {frames} frames")
    if kind == "long" and frames < 2:
        raise ValueError("long video needs a model of at least 2 frames")


GIVEN_TIMES = ("first", "zero")  # 1 / T (the reference's index 0) | 0 (clean; Kairos before issue 26)


def plan_times(knobs: dict, schedule: Schedule) -> tuple[float, float]:
    """``(given_time, t_min)`` of the ``given_time`` knob: ``first`` is ``1 / T`` for both (the
    reference), ``zero`` is ``0`` for both (Kairos before issue 26)."""
    return (1.0 / schedule.T,) * 2 if knobs["given_time"] == "first" else (0.0, 0.0)


def _build(solver, knobs: dict, ctx):
    frames = ctx.caps.frames
    _check(knobs, frames)
    check_pyramid_solver(solver, knobs["lag"])
    replacement = knobs["kind"] == "replace"
    # a long video's later windows give frames even when its first gives none
    gives = bool(given_frames(knobs, frames)) or knobs["kind"] == "long"
    check_update_solver(solver, knobs["given_update"], gives and not replacement)
    mask = jnp.zeros((frames,), bool).at[jnp.asarray(given_frames(knobs, frames), jnp.int32)].set(True)
    from sampling.grids import make_grid

    grid = make_grid(ctx.grid, ctx.steps, ctx.schedule)
    given_time, t_min = plan_times(knobs, solver.schedule)
    return FramePlan(solver, mask, jnp.zeros((), jnp.float32), grid, jnp.asarray(knobs["lag"], jnp.int32),
                     replacement=replacement, given_time=jnp.asarray(given_time, jnp.float32),
                     update=knobs["given_update"], t_min=t_min)


def _loop_grid(grid, knobs: dict, ctx):
    max_lag = max(knobs["lag"], knobs["max_lag"]) if knobs["kind"] == "pyramid" else 0
    return pyramid_loop_grid(grid, ctx.caps.frames, max_lag) if max_lag else grid


def _tag(knobs: dict) -> str:
    out = "plan-" + _format_plan(knobs).replace(":", "")
    if knobs["given_frames"] != "default":
        out += "-given" + knobs["given_frames"].replace(",", "-")
    out += "-gt0" if knobs["given_time"] == "zero" else ""
    out += "-clamp" if knobs["given_update"] == "clamp" else ""
    return out + (f"-max{knobs['max_lag']}" if knobs["kind"] == "pyramid" and knobs["max_lag"] else "")


def _given_knob(text) -> str:
    return format_given_frames(parse_given_frames(text))


register(TransformPart(
    name="plan", wraps="solver", order=100, build=_build, loop_grid=_loop_grid,
    help="a per-frame sampling plan for video models (FVDM): sync, i2v, interp, long:LENGTH, pyramid:LAG, or "
         "replace (given frames by the replacement trick, the baseline)",
    knobs=(Knob("kind", choice(*PLANS), traced=False, help="the plan", examples=("i2v", "long")),
           Knob("length", integer(0), 0, traced=False, help="frames of a long video", examples=(32, 64)),
           # traced inside FramePlan, but the loop's length follows it unless --plan_max_lag covers it
           Knob("lag", integer(0), 0, traced=False, help="grid steps by which frame i trails frame i-1 (pyramid)",
                examples=(1, 2)),
           Knob("given_frames", _given_knob, "default", flag="given_frames",
                help="frames given from --source (e.g. 0 or 0,15); default: i2v 0, interp the first and last"),
           Knob("max_lag", integer(0), 0, traced=False, flag="plan_max_lag",
                help="size the pyramid loop for this lag, so any lag up to it runs without a recompile"),
           Knob("given_time", choice(*GIVEN_TIMES), "first", traced=False, flag="given_time",
                help="time of the given frames and least time any network call sees: first (1/T, the reference's "
                     "index 0; default) or zero (clean t = 0, Kairos before issue 26)", examples=("first", "zero")),
           Knob("given_update", choice(*UPDATES), "ddim", traced=False, flag="given_update",
                help="given frames: ddim (the reference: re-estimated by the solver every step; default) or "
                     "clamp (held exactly, Kairos before issue 26)", examples=("ddim", "clamp"))),
    parse=_parse_plan, format=_format_plan, tag=_tag))
