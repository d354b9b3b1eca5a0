"""Every solver against the exact Gaussian-mixture denoiser: convergence order to the
float64 probability-flow solution, the data distribution, per-sample times."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion.analytic import make_mixture, probability_flow_reference
from diffusion.schedules import CosineLogSNRSchedule, make_schedule
from sampling.grids import make_grid
from sampling.loop import sample
from sampling.solvers import DDIM, DDPM
from sampling.solvers.base import fresh_noise, initial_state
from tests.sampling.toys import make_solver, solver_names, stateless

SMOOTH = CosineLogSNRSchedule(-10.0, 10.0)  # smooth in t: no kinks between training steps
MIX = make_mixture(SMOOTH, [[-1.0, 0.5], [1.0, -0.5], [0.3, 1.2]], [0.3, 0.2, 0.25], [0.5, 0.3, 0.2])
X_T = jax.random.normal(jax.random.PRNGKey(0), (256, 2))
T_END = 0.02


@pytest.fixture(scope="module")
def reference():
    return probability_flow_reference(MIX, X_T, 1.0, T_END)


def t_grid(n):
    return jnp.linspace(1.0, T_END, n + 1)


def lam_grid(n):
    lam = jnp.linspace(SMOOTH.logsnr(jnp.asarray(1.0)), SMOOTH.logsnr(jnp.asarray(T_END)), n + 1)
    return SMOOTH.t_from_logsnr(lam)


def rms_error(name, grid, ref):
    x = sample(MIX, None, make_solver(name, SMOOTH), grid, X_T)
    return float(np.sqrt(np.mean((np.asarray(x, np.float64) - ref) ** 2)))


# (solver, grid, steps, lower, upper bound of the observed order over steps -> 4 * steps).
# DPM-Solver++ is designed for logSNR grids, PNDM's multistep weights for equal steps in t.
# Multistep methods start with lower-order steps; 3M shows its order mid-range on the t grid.
ORDERS = [
    ("ddim", lam_grid, 20, 0.9, 1.2),
    ("dpmpp2m", lam_grid, 20, 1.7, 2.4),
    ("dpmpp3m", t_grid, 20, 3.0, 4.5),
    ("spndm", t_grid, 40, 1.8, 2.6),
    ("fpndm", t_grid, 20, 3.5, 5.5),
]


@pytest.mark.parametrize("name,grid,n,lo,hi", ORDERS)
def test_convergence_order(reference, name, grid, n, lo, hi):
    e1, e2 = rms_error(name, grid(n), reference), rms_error(name, grid(4 * n), reference)
    order = np.log2(e1 / e2) / 2.0
    assert lo <= order <= hi, f"{name}: errors {e1:.2e} -> {e2:.2e}, observed order {order:.2f}"


def test_dpm_solver_beats_ddim_at_equal_calls(reference):
    """20 network calls each on the logSNR grid."""
    err = {name: rms_error(name, lam_grid(20), reference) for name in ("ddim", "dpmpp2m", "dpmpp3m")}
    assert err["ddim"] > 4 * max(err["dpmpp2m"], err["dpmpp3m"])


@pytest.mark.parametrize("name", sorted(set(solver_names()) - {"consistency"}))  # its own test: needs a consistency fn
def test_samples_have_the_mixture_moments(name):
    sched = make_schedule("linear")
    mix = make_mixture(sched, [[-1.0, 0.5], [1.0, -0.5]], [0.3, 0.2], [0.6, 0.4])
    x_T = jax.random.normal(jax.random.PRNGKey(1), (4000, 2))
    steps = 1000 if name == "ddpm" else 100  # ancestral sampling needs fine steps (see below)
    x = np.asarray(sample(mix, None, make_solver(name, sched), make_grid("trailing", steps, sched), x_T, None,
                          jax.random.PRNGKey(2)))
    mean, var = (np.asarray(m) for m in mix.moments())
    np.testing.assert_allclose(x.mean(0), mean, atol=0.03)
    np.testing.assert_allclose(x.var(0), var, rtol=0.05)


def _posterior_step(x0, x_t, alpha_s, sigma_s, alpha_t, sigma_t, noise):
    """DDPM's ancestral step in float64: a draw from ``q(x_s | x_t, x0)``. With
    ``alpha_ts = alpha_t / alpha_s`` and ``var_ts = sigma_t^2 - alpha_ts^2 sigma_s^2``: mean
    ``alpha_s var_ts / sigma_t^2 x0 + alpha_ts sigma_s^2 / sigma_t^2 x_t``, variance
    ``var_ts sigma_s^2 / sigma_t^2``."""
    alpha_ts = alpha_t / alpha_s
    var_ts = max(sigma_t**2 - alpha_ts**2 * sigma_s**2, 0.0)
    mean = alpha_s * var_ts / sigma_t**2 * x0 + alpha_ts * sigma_s**2 / sigma_t**2 * x_t
    return mean + np.sqrt(var_ts * sigma_s**2 / sigma_t**2) * noise


def test_ddpm_step_equals_the_posterior_closed_form():
    """DDPM (DDIM's eta = 1 step) draws from the Gaussian posterior: identical to the
    closed form with the same noise."""
    sched = make_schedule("linear")
    mix = make_mixture(sched, [[0.5, 0.1, -0.3]], [0.3])
    model = stateless(lambda x, t: mix(None, x, t)[0])  # noqa: E731
    st = initial_state(jax.random.normal(jax.random.PRNGKey(2), (8, 3)), jax.random.PRNGKey(3))
    noise = np.asarray(fresh_noise(st)[1], np.float64)
    x_t = np.asarray(st.x, np.float64)
    for t, s in [(0.9, 0.7), (0.3, 0.25), (0.05, 0.0)]:
        a = DDPM(sched).step(st, model, jnp.asarray(t), jnp.asarray(s)).x
        x0 = np.asarray(mix(None, st.x, jnp.asarray(t))[0].x0, np.float64)
        (alpha_t, sigma_t), (alpha_s, sigma_s) = (
            (float(v) for v in sched.alpha_sigma(jnp.asarray(u))) for u in (t, s))
        b = _posterior_step(x0, x_t, alpha_s, sigma_s, alpha_t, sigma_t, noise)
        np.testing.assert_allclose(np.asarray(a), b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", solver_names())
def test_per_sample_times(name):
    """Per-sample [B] grids give every sample the trajectory it gets alone."""
    sched = make_schedule("linear")
    mix = make_mixture(sched, [[-1.0, 0.5], [1.0, -0.5]], [0.3, 0.2])
    solver = make_solver(name, sched)
    x = jax.random.normal(jax.random.PRNGKey(4), (2, 2))
    grids = [np.array([1.0, 0.7, 0.5, 0.3, 0.1, 0.0]), np.array([0.9, 0.8, 0.4, 0.2, 0.05, 0.0])]
    model = stateless(lambda x, t: mix(None, x, t)[0])  # noqa: E731

    def run(x, grid):
        st = solver.init(x, jax.random.PRNGKey(5))
        for i in range(grid.shape[0] - 1):
            st = solver.step(st, model, grid[i], grid[i + 1])
        return st.x

    both = run(x, jnp.asarray(np.stack(grids, 1)))  # [N + 1, B]
    for b in range(2):
        alone = run(x, jnp.asarray(grids[b]))
        np.testing.assert_allclose(np.asarray(both[b]), np.asarray(alone[b]), rtol=1e-4, atol=1e-5)


def test_pndm_transfer_is_a_ddim_step():
    from sampling.solvers.pndm import transfer

    x = jax.random.normal(jax.random.PRNGKey(0), (3, 4))
    eps = jax.random.normal(jax.random.PRNGKey(1), (3, 4))
    sched = make_schedule("linear")
    a_t, s_t = sched.alpha_sigma(jnp.asarray(0.7))
    a_s, s_s = sched.alpha_sigma(jnp.asarray(0.4))
    x0 = (x - s_t * eps) / a_t
    np.testing.assert_allclose(np.asarray(transfer(sched, x, eps, jnp.asarray(0.7), jnp.asarray(0.4))),
                               np.asarray(a_s * x0 + s_s * eps), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(transfer(sched, x, eps, jnp.asarray(0.7), jnp.asarray(0.0))),
                               np.asarray(x0), rtol=1e-5, atol=1e-6)  # onto t = 0: the implied x0


def test_gaussian_flow_is_an_affine_map_of_the_noise():
    """One Gaussian: DDIM with fine steps reproduces mu + s z exactly (first-order error)."""
    sched = make_schedule("linear")
    mix = make_mixture(sched, [[0.5, 0.5]], [0.3])
    a1, s1 = sched.alpha_sigma(jnp.asarray(1.0))
    std_1 = float(jnp.sqrt(a1**2 * 0.09 + s1**2))
    exact = 0.5 + 0.3 * (X_T - float(a1) * 0.5) / std_1
    err = {n: float(jnp.abs(sample(mix, None, DDIM(sched, 0.0), make_grid("trailing", n, sched), X_T) - exact).max())
           for n in (50, 100, 1000)}
    assert 1.7 < err[50] / err[100] < 2.3 and err[1000] < 6e-3
