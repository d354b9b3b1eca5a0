"""sample(): the jitted scan equals the Python debug loop; sweeping knobs never recompiles."""

import jax
import jax.numpy as jnp
import numpy as np

from diffusion.analytic import make_mixture
from diffusion.param import Prediction
from diffusion.schedules import make_schedule
from sampling import loop
from sampling.grids import make_grid
from sampling.loop import sample
from sampling.solvers import DDIM
from sampling.transforms import Guided, TimeShift
from tests.sampling.toys import LabelMeans, make_solver, solver_names, stateless

SCHED = make_schedule("linear")
MIX = make_mixture(SCHED, [[-1.0, 0.5], [1.0, -0.5]], [0.3, 0.2])


def test_debug_loop_equals_scan_for_every_solver():
    x_T = jax.random.normal(jax.random.PRNGKey(0), (16, 2))
    grid = make_grid("trailing", 6, SCHED)
    for name in solver_names():
        solver = make_solver(name, SCHED)
        a = sample(MIX, None, solver, grid, x_T, None, jax.random.PRNGKey(1))
        b = sample(MIX, None, solver, grid, x_T, None, jax.random.PRNGKey(1), debug=True)
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5, err_msg=name)


def test_last_step_returns_the_x0_prediction():
    """Data-prediction solvers end on the model's x0 (PNDM ends on the x0 implied by its
    combined noise estimate, tested in test_solvers)."""
    x0_const = jnp.full((2, 3), 0.25)
    model = stateless(lambda x, t: Prediction(x0=x0_const, eps=jnp.zeros_like(x)))  # noqa: E731
    for name in ("ddim", "ddpm", "dpmpp2m", "dpmpp3m"):
        solver = make_solver(name, SCHED)
        st = solver.init(jnp.ones((2, 3)), jax.random.PRNGKey(0))
        out = solver.step(st, model, jnp.asarray(0.01), jnp.asarray(0.0)).x
        np.testing.assert_allclose(np.asarray(out), 0.25, atol=1e-5, err_msg=name)


def test_knobs_are_traced_only_steps_recompile():
    den = LabelMeans(SCHED, jnp.array([[0.5, 0.5], [-0.5, 0.2]]))
    cond = {"label": jnp.array([0, 1, 0, 1])}
    x_T = jnp.ones((4, 2))
    grid = make_grid("trailing", 7, SCHED)
    before = loop._chain_jit._cache_size()
    outs = []
    for eta, w, window, cutoff in [(0.0, 1.0, 10.0, 500.0), (0.5, 2.0, 20.0, 300.0), (1.0, 4.0, 0.0, 900.0)]:
        solver = TimeShift(DDIM(SCHED, eta), window, cutoff)
        outs.append(sample(Guided(den, w, null_label=2), None, solver, grid, x_T, cond))
    assert loop._chain_jit._cache_size() == before + 1
    assert not np.allclose(np.asarray(outs[0]), np.asarray(outs[1]))  # the knobs are really used
    # a new denoiser object of equal structure does not recompile either
    same = LabelMeans(SCHED, jnp.array([[0.1, 0.1], [0.2, 0.2]]))
    sample(Guided(same, 3.0, null_label=2), None, TimeShift(DDIM(SCHED, 0.1), 5.0, 100.0), grid, x_T, cond)
    assert loop._chain_jit._cache_size() == before + 1
    # the number of steps does
    sample(Guided(den, 1.0, null_label=2), None, TimeShift(DDIM(SCHED, 0.0), 5.0, 100.0),
           make_grid("trailing", 8, SCHED), x_T, cond)
    assert loop._chain_jit._cache_size() == before + 2


def test_trajectory_ends_in_the_sample_and_follows_the_grid():
    from sampling.loop import sample_trajectory

    x_T = jax.random.normal(jax.random.PRNGKey(0), (64, 2))
    grid = make_grid("trailing", 5, SCHED)
    traj = sample_trajectory(MIX, None, DDIM(SCHED, 0.0), grid, x_T)
    assert traj.shape == (5, 64, 2)
    np.testing.assert_allclose(np.asarray(traj[-1]), np.asarray(sample(MIX, None, DDIM(SCHED, 0.0), grid, x_T)),
                               rtol=1e-6, atol=1e-6)
    # one step from x_T on the same grid is the trajectory's first entry
    np.testing.assert_allclose(np.asarray(traj[0]),
                               np.asarray(sample(MIX, None, DDIM(SCHED, 0.0), grid[:2], x_T)), rtol=1e-5, atol=1e-6)
