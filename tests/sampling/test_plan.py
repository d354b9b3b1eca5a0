"""Per-frame sampling plans (FVDM) on an exact video denoiser: given frames at the reference's
first noise level and DDIM-updated as the reference does (or held exactly), no network time
below 1/T, image-to-video reaching the closed-form conditional, the pyramid's per-frame
times, and no recompilation when the plan's knobs change."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct

from diffusion.analytic import SharedLatentVideoDenoiser
from diffusion.contract import Stateless
from diffusion.param import Prediction
from diffusion.schedules import bcast_right
from diffusion.schedules import make_schedule
from sampling import loop
from sampling.grids import make_grid
from sampling.solvers.ddim import DDIM
from sampling.solvers.dpm_solver import DPMSolverPP
from sampling.transforms.plan import FramePlan, check_pyramid_solver, pyramid_loop_grid

SCHED = make_schedule("cosine", 1000)
ORACLE = SharedLatentVideoDenoiser(1.0, 0.5, SCHED)
F = 3
SHAPE = (F, 2, 2, 1)  # 4 pixels per frame


def _plan(given, x_given, grid, lag=0, solver=None, **kw):
    return FramePlan(solver or DDIM(SCHED), jnp.asarray(given), jnp.asarray(x_given, jnp.float32), grid, lag, **kw)


def _noise(n, seed=0):
    return jax.random.normal(jax.random.PRNGKey(seed), (n, *SHAPE))


@pytest.mark.parametrize("given", [[True, False, False], [True, False, True], [False, True, False]])
@pytest.mark.parametrize("solver", [DDIM(SCHED), DPMSolverPP(SCHED, 2)])
def test_given_frames_come_out_exactly_under_the_clamp(given, solver):
    """``update="clamp"`` (Kairos before issue 26, a declared variant) holds given frames
    exactly, under any solver; the reference's ``"ddim"`` re-estimates them (tests below)."""
    grid = make_grid("trailing", 8, SCHED)
    x_given = 0.7 * _noise(4, seed=1)
    out = np.asarray(loop.sample(ORACLE, None, _plan(given, x_given, grid, solver=solver, update="clamp"), grid,
                                 _noise(4)))
    g = np.array(given)
    np.testing.assert_array_equal(out[:, g], np.asarray(x_given)[:, g])
    assert np.isfinite(out).all() and np.abs(out[:, ~g] - np.asarray(x_given)[:, ~g]).min() > 0


def test_image_to_video_reaches_the_closed_form_conditional():
    """Frame 0 given as ``g``: the other frames' mean is ``gain * g`` and their variance the
    conditional one; sampling without the plan gives mean 0 and the prior variance. Under
    the reference's defaults (given frame at ``1/T``, re-estimated by DDIM every step) the
    exact denoiser moves the given frame a little (iterating ``E[x0 | x at 1/T]`` contracts
    toward the prior mean) and the conditional still holds."""
    n, grid = 4000, make_grid("trailing", 200, SCHED)  # DDIM's variance shrinkage: 1.3% at 200 steps
    g = jnp.array([1.5, -1.0, 0.5, 2.0]).reshape(1, 1, 2, 2, 1)
    x_given = jnp.broadcast_to(jnp.concatenate([g, jnp.zeros((1, F - 1, 2, 2, 1))], axis=1), (n, *SHAPE))
    out = np.asarray(loop.sample(ORACLE, None, _plan([True, False, False], x_given, grid), grid, _noise(n)))
    gain, variance = ORACLE.given_one_frame()
    rest = out[:, 1:]
    drift = np.abs(out[:, 0] - np.asarray(g[0, 0])).max()
    assert 1e-4 < drift < 0.05  # 0.033: the reference's update moves it; the clamp would not
    se = np.sqrt(variance / n)
    np.testing.assert_allclose(rest.mean(axis=0), np.broadcast_to(gain * np.asarray(g[0]), rest.shape[1:]), atol=5 * se)
    np.testing.assert_allclose(rest.var(axis=0), variance, rtol=0.08)
    free = np.asarray(loop.sample(ORACLE, None, DDIM(SCHED), grid, _noise(n)))
    assert np.abs(free[:, 1:].mean(axis=0) - gain * np.asarray(g[0])).max() > 0.3
    np.testing.assert_allclose(free.var(axis=0), 1.25, rtol=0.08)


def _pyramid_map_float64(grid, lag):
    """The pyramid DDIM sampler on the exact oracle is linear per pixel, ``x_0 = M x_T``:
    ``M [F, F]`` re-derived in float64 NumPy (lagged times, exact posterior mean with every
    frame's network time at least ``1/T`` (a finished frame is seen at ``1/T``), a frame
    with equal times left alone)."""
    g = np.asarray(grid, np.float64)
    n = len(g) - 1
    ab = lambda t: np.asarray(SCHED.alpha_bar(jnp.asarray(t, jnp.float32)), np.float64)  # noqa: E731
    cov = np.ones((F, F)) + 0.25 * np.eye(F)
    m = np.eye(F)
    for k in range(n + lag * (F - 1)):
        idx = lambda j: np.clip(j - lag * np.arange(F), 0, n)  # noqa: E731
        t, s = g[idx(k)], g[idx(k + 1)]
        a_n = np.sqrt(ab(np.maximum(t, 1.0 / SCHED.T)))  # the network's times: floored at 1/T
        a_t, a_s = np.sqrt(ab(t)), np.sqrt(ab(s))
        sig_t, sig_s = np.sqrt(1 - ab(t)), np.sqrt(1 - ab(s))
        sig_n = np.sqrt(1 - a_n**2)
        x0 = cov @ np.diag(a_n) @ np.linalg.inv(np.diag(a_n) @ cov @ np.diag(a_n) + np.diag(sig_n**2))
        eps = (np.eye(F) - a_t[:, None] * x0) / np.where(sig_t > 0, sig_t, 1.0)[:, None]  # finished rows: unused
        step = a_s[:, None] * x0 + sig_s[:, None] * eps
        m = np.where((t == s)[:, None], m, step @ m)
    return m


def test_pyramid_times_lag_per_frame_and_match_a_float64_rederivation():
    grid = make_grid("trailing", 10, SCHED)
    plan = _plan([False] * F, jnp.zeros((1, *SHAPE)), grid, lag=2)
    times = [plan.frame_times(jnp.asarray(k), (1, F)) for k in range(10 + 2 * (F - 1))]
    t = np.array([np.asarray(a)[0] for a, _ in times])  # [K, F]
    t_next = np.array([np.asarray(b)[0] for _, b in times])
    np.testing.assert_array_equal(t[:, 0], np.concatenate([np.asarray(grid[:-1]), np.zeros(4)]))
    np.testing.assert_array_equal(t[4:14, 2], np.asarray(grid[:-1]))
    assert (t[:4, 2] == grid[0]).all() and (t_next[:4, 2] == grid[0]).all()  # frame 2 waits 4 steps
    assert (t_next[-1] == 0).all()
    # linear per pixel: feeding the frame basis as x_T reads off the map M
    basis = jnp.broadcast_to(jnp.eye(F)[:, :, None, None, None], (F, *SHAPE))
    for lag, max_lag in ((2, 2), (1, 2), (0, 2)):
        plan = _plan([False] * F, jnp.zeros((1, *SHAPE)), grid, lag=lag)
        out = np.asarray(loop.sample(ORACLE, None, plan, pyramid_loop_grid(grid, F, max_lag), basis))
        np.testing.assert_allclose(out[..., 0, 0, 0].T, _pyramid_map_float64(grid, lag), rtol=1e-4, atol=1e-5)
    synchronous = np.asarray(loop.sample(ORACLE, None, DDIM(SCHED), grid, basis))
    np.testing.assert_allclose(out, synchronous, rtol=1e-5, atol=1e-6)  # lag 0 on a padded grid = plain DDIM


def test_pyramid_refuses_a_multistep_solver():
    check_pyramid_solver(DDIM(SCHED), 2)
    check_pyramid_solver(DPMSolverPP(SCHED, 2), 0)
    with pytest.raises(ValueError, match="the pyramid plan needs a one-step solver"):
        check_pyramid_solver(DPMSolverPP(SCHED, 2), 1)


def test_changing_given_frames_values_or_lag_does_not_recompile():
    grid = make_grid("trailing", 6, SCHED)
    loop_grid = pyramid_loop_grid(grid, F, 2)
    x = _noise(2)
    outs = []
    before = None
    for given, lag, scale in (([True, False, False], 0, 1.0), ([False, False, True], 1, 2.0),
                              ([True, True, False], 2, -1.0)):
        plan = _plan(given, scale * _noise(2, seed=3), grid, lag)
        outs.append(np.asarray(loop.sample(ORACLE, None, plan, loop_grid, x)))
        size = loop._chain_jit._cache_size()
        before = size if before is None else before
        assert size == before
    assert not np.allclose(outs[0], outs[1])


def test_a_plan_needs_a_video():
    grid = make_grid("trailing", 4, SCHED)
    with pytest.raises(ValueError, match="a frame plan samples videos"):
        _plan([True], jnp.zeros((2, 3)), grid).init(jnp.zeros((2, 3)), jax.random.PRNGKey(0))


def test_frames_whose_times_do_not_move_are_left_alone():
    """With an inexact network (x0 and eps disagree) a DDIM step from t to t itself would
    move a frame; the plan leaves a frame waiting its turn exactly as it is."""

    @struct.dataclass
    class Inexact(Stateless):
        shrink: float = 0.5

        def __call__(self, params, x_t, t, cond=None, **_):
            pred, _ = ORACLE(params, x_t, t)
            return Prediction(x0=self.shrink * pred.x0, eps=pred.eps), {}

    grid = make_grid("trailing", 6, SCHED)
    plan = _plan([False] * F, jnp.zeros((1, *SHAPE)), grid, lag=2)
    x_T = _noise(2)
    states = np.asarray(loop.sample_trajectory(Inexact(), None, plan, pyramid_loop_grid(grid, F, 2), x_T))
    for k in range(4):  # frame 2 starts at loop step 4
        np.testing.assert_array_equal(states[k][:, 2], np.asarray(x_T)[:, 2])
    assert np.abs(states[4][:, 2] - np.asarray(x_T)[:, 2]).max() > 1e-3
    assert np.abs(states[0][:, 0] - np.asarray(x_T)[:, 0]).max() > 1e-3


# ------------------------------------------------------------------------------------------
# FVDM's given frames as the reference runs them (issue 26)

LINEAR = make_schedule("linear", 1000)


def _network_times(plan, grid, x, schedule=LINEAR):
    """``[calls, B, F]``: every time a spy oracle was called at (one eager run)."""
    seen = []

    class Spy(SharedLatentVideoDenoiser):
        def __call__(self, params, x_t, t, cond=None, **kw):
            jax.debug.callback(lambda tt: seen.append(np.asarray(tt)), jnp.broadcast_to(t, x_t.shape[:2]))
            return super().__call__(params, x_t, t, cond, **kw)

    loop.sample(Spy(1.0, 0.5, schedule), None, plan, grid, x, debug=True)
    return np.stack(seen)


PLANS = {"i2v": ([1, 0, 0, 0], 0), "interp": ([1, 0, 0, 1], 0), "long window": ([1, 1, 0, 0], 0),
         "pyramid:2": ([0, 0, 0, 0], 2)}


@pytest.mark.parametrize("name", list(PLANS))
def test_every_network_time_is_a_training_time(name):
    """Training draws ``n / T`` for ``n = 1..T`` (``diffusion/train/objective.py``;
    tests/train/test_video_times.py pins ``t >= 1e-3``); the reference's given frames sit at its
    index 0, our ``1/T``. DDIM 25 trailing steps, linear schedule: the least time any call
    sees is ``1e-3``. With ``given_time = 0`` and no floor (Kairos before issue 26) the
    network saw the clean ``t = 0`` in every call of i2v, interp and a long-video window,
    and in the 6 calls of ``pyramid:2`` after frame 0 finished."""
    given, lag = PLANS[name]
    f = len(given)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, f, 2, 2, 1))
    grid = make_grid("trailing", 25, LINEAR)
    loop_grid = pyramid_loop_grid(grid, f, lag) if lag else grid
    plan = lambda **kw: FramePlan(DDIM(LINEAR), jnp.asarray(given, bool), jnp.zeros_like(x), grid, lag, **kw)  # noqa: E731
    for update in ("ddim", "clamp"):
        ts = _network_times(plan(update=update), loop_grid, x)
        np.testing.assert_allclose(ts.min(), 1e-3, rtol=0, atol=1e-7)
    old = _network_times(plan(given_time=0.0, t_min=0.0, update="clamp"), loop_grid, x)
    calls_at_zero = int((old == 0).any(axis=(1, 2)).sum())
    assert (len(old), calls_at_zero) == ((31, 6) if lag else (25, 25))


@struct.dataclass
class ConstEps(Stateless):
    """An eps-prediction toy: ``eps_hat = 0.3`` everywhere, ``x0_hat`` from it at the time given."""

    def __call__(self, params, x_t, t, cond=None, **_):
        t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), x_t.shape[:2])
        alpha, sigma = LINEAR.alpha_sigma(t)
        eps = jnp.full_like(x_t, 0.3)
        return Prediction(x0=(x_t - bcast_right(sigma, x_t) * eps) / bcast_right(alpha, x_t), eps=eps), {}


def _reference_given_frame(value: float, eps: float, steps: int) -> float:
    """FVDM@9373f998 ``gaussian_diffusion.py:341-351, 776-798`` (DDIM, eta 0) on a given frame
    at spaced index 0, in float64: ``alpha_bar = 1 - beta_1`` (linear, ``:107-116, 175-176``)
    and ``alpha_bar_prev = 1`` (``:177``), so each step is ``pred_xstart = x / sqrt(ab) -
    sqrt(1 / ab - 1) eps``."""
    ab = 1.0 - np.linspace(1e-4, 0.02, 1000, dtype=np.float64)[0]
    x = value
    for _ in range(steps):
        x0 = np.sqrt(1 / ab) * x - np.sqrt(1 / ab - 1) * eps
        e = (np.sqrt(1 / ab) * x - x0) / np.sqrt(1 / ab - 1)
        x = x0 * np.sqrt(1.0) + np.sqrt(1 - 1.0) * e
    return x


def test_given_frames_follow_ddim_like_the_reference():
    """i2v, frame 0 given as 1.0, a constant ``eps_hat = 0.3``, the reference's sampler (DDIM
    50 steps on ADM's grid): the given frame is re-estimated from ``(x, 1/T)`` at every step,
    ``0.99704985`` after one and ``0.8523118`` after 50 (float64 port above); the clamp
    holds it at 1.0."""
    assert _reference_given_frame(1.0, 0.3, 1) == pytest.approx(0.99704985, abs=1e-8)
    assert _reference_given_frame(1.0, 0.3, 50) == pytest.approx(0.8523118, abs=1e-7)
    x_given = jnp.zeros((1, 4, 2, 2, 1)).at[:, 0].set(1.0)
    for steps in (1, 50):
        grid = make_grid("adm", steps, LINEAR)
        for update, want in (("ddim", _reference_given_frame(1.0, 0.3, steps)), ("clamp", 1.0)):
            plan = FramePlan(DDIM(LINEAR), jnp.asarray([1, 0, 0, 0], bool), x_given, grid, update=update)
            out = np.asarray(loop.sample(ConstEps(), None, plan, grid, jnp.zeros_like(x_given)))
            np.testing.assert_allclose(out[0, 0], want, rtol=0, atol=1e-5 if update == "ddim" else 0)
