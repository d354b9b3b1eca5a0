"""The sample() loop and the DDPM / DDIM solvers, on an exact Gaussian denoiser."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion.param import Prediction
from diffusion.schedules import make_schedule
from sampling import loop
from sampling.grids import make_grid
from sampling.loop import sample
from sampling.solvers import DDIM, DDPM, make_solver
from sampling.solvers.base import initial_state
from tests.sampling.gaussian_oracle import GaussianDenoiser

SCHED = make_schedule("linear")


@pytest.mark.parametrize("solver,steps", [(DDIM(SCHED, 0.0), 200), (DDIM(SCHED, 1.0), 1000), (DDPM(SCHED), 1000)])
def test_samples_match_the_data_distribution(solver, steps):
    """Ancestral sampling shrinks the variance at coarse steps (5% low at 200 steps here),
    so the stochastic solvers get the full 1000-step training grid."""
    den = GaussianDenoiser(SCHED, mu=0.5, s=0.3)
    x_T = jax.random.normal(jax.random.PRNGKey(0), (4000, 2))
    x = np.asarray(sample(den, None, solver, make_grid("uniform", steps, SCHED), x_T, None, jax.random.PRNGKey(1)))
    assert abs(x.mean() - 0.5) < 0.01
    assert abs(x.std() - 0.3) / 0.3 < 0.025


def test_ddim_converges_at_first_order_to_the_exact_flow():
    """For Gaussian data the probability-flow ODE is an affine map: z at t=1 goes to
    ``mu + s (z - alpha_1 mu) / std_1``. DDIM's error to it halves when the steps double."""
    den = GaussianDenoiser(SCHED, mu=0.5, s=0.3)
    x_T = jax.random.normal(jax.random.PRNGKey(0), (256, 2))
    a1, s1 = SCHED.alpha_sigma(jnp.asarray(1.0))
    std_1 = float(jnp.sqrt(a1**2 * 0.09 + s1**2))  # x_1's true std
    exact = 0.5 + 0.3 * (x_T - float(a1) * 0.5) / std_1
    err = {n: float(jnp.abs(sample(den, None, DDIM(SCHED, 0.0), make_grid("uniform", n, SCHED), x_T) - exact).max())
           for n in (50, 100, 1000)}
    assert 1.7 < err[50] / err[100] < 2.3  # order 1
    assert err[1000] < 6e-3


def test_ddpm_step_equals_ddim_eta_one():
    """DDIM's eta=1 step is the DDPM posterior: identical with the same noise."""
    den = GaussianDenoiser(SCHED)
    x = jax.random.normal(jax.random.PRNGKey(2), (8, 3))
    model = lambda x, t: den(None, x, t)  # noqa: E731
    st = initial_state(x, jax.random.PRNGKey(3))
    for t, s in [(0.9, 0.7), (0.3, 0.25), (0.05, 0.0)]:
        a = DDPM(SCHED).step(st, model, jnp.asarray(t), jnp.asarray(s)).x
        b = DDIM(SCHED, 1.0).step(st, model, jnp.asarray(t), jnp.asarray(s)).x
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_last_step_returns_the_x0_prediction():
    x0_const = jnp.full((2, 3), 0.25)
    den_fn = lambda x, t: Prediction(x0=x0_const, eps=jnp.zeros_like(x))  # noqa: E731
    st = initial_state(jnp.ones((2, 3)), jax.random.PRNGKey(0))
    for solver in [DDIM(SCHED, 0.0), DDIM(SCHED, 1.0), DDPM(SCHED)]:
        out = solver.step(st, den_fn, jnp.asarray(0.01), jnp.asarray(0.0)).x
        np.testing.assert_allclose(np.asarray(out), 0.25, atol=1e-6)


def test_per_sample_times_broadcast():
    """A [B] time vector gives each sample the step it would get alone."""
    den = GaussianDenoiser(SCHED)
    model = lambda x, t: den(None, x, t)  # noqa: E731
    x = jax.random.normal(jax.random.PRNGKey(2), (2, 4))
    st = initial_state(x, jax.random.PRNGKey(3))
    both = DDIM(SCHED, 0.0).step(st, model, jnp.array([0.8, 0.4]), jnp.array([0.6, 0.2])).x
    for i, (t, s) in enumerate([(0.8, 0.6), (0.4, 0.2)]):
        alone = DDIM(SCHED, 0.0).step(st, model, jnp.asarray(t), jnp.asarray(s)).x
        np.testing.assert_allclose(np.asarray(both[i]), np.asarray(alone[i]), rtol=1e-5, atol=1e-6)


def test_debug_loop_equals_scan():
    den = GaussianDenoiser(SCHED)
    x_T = jax.random.normal(jax.random.PRNGKey(0), (16, 2))
    grid = make_grid("uniform", 10, SCHED)
    for solver in [DDIM(SCHED, 0.5), DDPM(SCHED)]:
        a = sample(den, None, solver, grid, x_T, None, jax.random.PRNGKey(1))
        b = sample(den, None, solver, grid, x_T, None, jax.random.PRNGKey(1), debug=True)
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def test_changing_eta_does_not_recompile():
    den = GaussianDenoiser(SCHED, mu=0.1)  # a denoiser no other test uses: fresh cache entries
    x_T = jnp.ones((4, 2))
    grid = make_grid("uniform", 7, SCHED)
    before = loop._chain_jit._cache_size()
    outs = [sample(den, None, DDIM(SCHED, eta), grid, x_T) for eta in (0.0, 0.3, 1.0)]
    assert loop._chain_jit._cache_size() == before + 1
    assert not np.allclose(np.asarray(outs[0]), np.asarray(outs[2]))  # eta really is used
    sample(den, None, DDIM(SCHED, 0.0), make_grid("uniform", 8, SCHED), x_T)  # step count: recompiles
    assert loop._chain_jit._cache_size() == before + 2


def test_grid_and_solver_errors():
    g = make_grid("uniform", 10, SCHED)
    assert g.shape == (11,) and float(g[0]) == 1.0 and float(g[-1]) == 0.0
    np.testing.assert_allclose(np.asarray(g) * 1000, np.round(np.asarray(g) * 1000), atol=1e-3)  # on the T grid
    with pytest.raises(ValueError, match="unknown time grid"):
        make_grid("fancy", 10, SCHED)
    with pytest.raises(ValueError, match="exceed"):
        make_grid("uniform", 2000, SCHED)
    with pytest.raises(ValueError, match="available: ddim, ddpm"):
        make_solver("euler", SCHED)
