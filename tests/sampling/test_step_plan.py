"""Step plans (docs/design/caching.md): which modes each sampler step runs, that the loop runs
exactly those in one program for every schedule (an all-off schedule included: plain steps,
no map stored), and that the segmented loop gives what per-step caching gave."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct

from diffusion.contract import COMPUTE, Modes, StepPlan, read_plan
from diffusion.param import Prediction
from sampling import loop
from sampling.grids import make_grid
from sampling.loop import sample
from sampling.transforms import AttentionReuse, FeatureCache
from sampling.transforms.schedules import hurry, reuse_steps, uniform_full
from tests.sampling.test_caching import DEN, SCHED, STEPS, inputs, params
from tests.sampling.toys import make_solver

ATTENTION = {"compute": 0, "store": 1, "reuse": 2}
FEATURES = {"compute": 0, "store": 1, "retrieve": 2}
LOG: list[tuple[int, int, int]] = []


@struct.dataclass
class Recorder:
    """A denoiser that logs, at run time, each call's step and modes (x0 = 0.9 x)."""

    def init_cache(self, params, x_t, cond=None, num_steps=None, modes: Modes = COMPUTE):
        return {} if modes == COMPUTE else {"maps": jnp.zeros(x_t.shape)}

    def step_plan(self, num_steps):
        return StepPlan()

    def __call__(self, params, x_t, t, cond=None, *, cache=None, step=None, modes: Modes = COMPUTE, rng=None,
                 train=False):
        code = jnp.asarray([ATTENTION[modes.attention], FEATURES[modes.features]], jnp.int32)
        jax.debug.callback(lambda s, c: LOG.append((int(s), int(c[0]), int(c[1]))), step, code, ordered=True)
        x0 = 0.9 * x_t
        return Prediction(x0=x0, eps=x_t - x0), cache


def modes_run(den, steps=6):
    """``[(attention code, feature code)]`` of each step as the compiled loop ran it."""
    LOG.clear()
    grid = make_grid("trailing", steps, SCHED)
    jax.block_until_ready(sample(den, {}, make_solver("ddim", SCHED), grid, jnp.ones((2, 3)), None))
    jax.effects_barrier()
    assert [s for s, _, _ in LOG] == list(range(steps)), LOG
    return [(a, f) for _, a, f in LOG]


def test_a_step_stores_only_when_the_next_one_reads():
    np.testing.assert_array_equal(read_plan(hurry(6, 2)), [0, 0, 0, 1, 2, 2])
    np.testing.assert_array_equal(read_plan(reuse_steps(6, [2, 4])), [0, 1, 2, 1, 2, 0])
    np.testing.assert_array_equal(read_plan(np.ones(6, bool)), [1, 2, 2, 2, 2, 2])  # step 0 never reads
    np.testing.assert_array_equal(read_plan(~uniform_full(6, 2)), [1, 2, 1, 2, 1, 2])


def test_with_both_caches_a_full_step_stores_the_maps_its_deep_layers_give_a_later_reuse():
    """Steps 1 and 2 retrieve features (deep layers idle); step 3 runs them and reuses maps:
    its deep maps come from step 0, the last step that ran them, so step 0 stores."""
    reuse = np.array([0, 0, 1, 1, 0, 0], bool)
    full = np.array([1, 0, 0, 1, 1, 1], bool)
    plan = FeatureCache(AttentionReuse(Recorder(), reuse), full).step_plan(6)
    attention, features = plan.codes(6)
    np.testing.assert_array_equal(features, [1, 2, 2, 0, 0, 0])
    np.testing.assert_array_equal(attention, [1, 1, 2, 2, 0, 0])


def test_the_loop_runs_the_plan_in_one_program_and_an_all_off_schedule_stores_nothing():
    off = modes_run(AttentionReuse(Recorder(), np.zeros(6, bool)))
    size = loop._chain_jit._cache_size()
    assert off == [(0, 0)] * 6  # plain steps: no map is produced
    assert modes_run(AttentionReuse(Recorder(), hurry(6, 2))) == [(0, 0), (0, 0), (0, 0), (1, 0), (2, 0), (2, 0)]
    assert modes_run(AttentionReuse(Recorder(), reuse_steps(6, [2, 4]))) == [
        (0, 0), (1, 0), (2, 0), (1, 0), (2, 0), (0, 0)]
    assert loop._chain_jit._cache_size() == size  # the same program for every schedule
    assert modes_run(FeatureCache(Recorder(), uniform_full(6, 2))) == [(0, 1), (0, 2)] * 3
    assert modes_run(FeatureCache(Recorder(), np.ones(6, bool))) == [(0, 0)] * 6


def test_debug_mode_runs_the_same_plan():
    LOG.clear()
    den = AttentionReuse(Recorder(), hurry(6, 2))
    sample(den, {}, make_solver("ddim", SCHED), make_grid("trailing", 6, SCHED), jnp.ones((2, 3)), None, debug=True)
    jax.effects_barrier()
    assert [(a, f) for _, a, f in LOG] == [(0, 0), (0, 0), (0, 0), (1, 0), (2, 0), (2, 0)]


def per_step_reference(reuse, full, branch, solver="ddim"):
    """The caching semantics before step plans, step by step: every computing step stores the
    maps of the layers it runs, every full step stores its feature; reuse / retrieve read the
    latest. ``[B, ...]`` the final sample."""
    x, cond = inputs()
    grid = make_grid("trailing", STEPS, SCHED)
    solver_ = make_solver(solver, SCHED)
    store = Modes(attention="store", features="store", feature_branch=branch)
    state = solver_.init(x, jax.random.PRNGKey(3)).replace(cache=DEN.init_cache(params(), x, cond, STEPS, store))
    for i in range(STEPS):
        modes = Modes(attention="reuse" if reuse[i] and i else "store",
                      features="store" if full[i] or not i else "retrieve", feature_branch=branch)
        model = lambda x_, t_, c, i=i, m=modes: DEN(params(), x_, t_, cond, cache=c, step=i, modes=m)  # noqa: E731
        state = solver_.step(state, model, grid[i], grid[i + 1])
    return np.asarray(state.x)


@pytest.mark.parametrize("reuse, full", [
    ([0, 0, 1, 1, 0, 1], [1, 1, 1, 1, 1, 1]),
    ([0, 0, 0, 0, 0, 0], [1, 0, 1, 0, 1, 0]),
    ([0, 0, 1, 1, 0, 0], [1, 0, 0, 1, 1, 1]),  # deep maps from step 0 reach step 3
    ([0, 1, 1, 0, 1, 1], [1, 0, 1, 1, 0, 1]),
])
def test_segments_give_what_per_step_caching_gave(reuse, full):
    reuse, full = np.asarray(reuse, bool), np.asarray(full, bool)
    x, cond = inputs()
    den = FeatureCache(AttentionReuse(DEN, reuse), full, branch=0)
    got = np.asarray(sample(den, params(), make_solver("ddim", SCHED), make_grid("trailing", STEPS, SCHED), x, cond,
                            jax.random.PRNGKey(3)))
    want = per_step_reference(reuse, full, branch=0)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_a_denoiser_without_a_step_plan_is_named():
    class Bare:
        def init_cache(self, *args, **kwargs):
            return {}

    with pytest.raises(TypeError, match="Bare has no step_plan"):
        loop.step_plan(Bare(), 4)
