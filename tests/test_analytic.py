"""The exact Gaussian-mixture denoiser and the float64 probability-flow reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion.analytic import make_mixture, probability_flow_reference
from diffusion.schedules import CosineLogSNRSchedule, bcast_right, make_schedule

SCHED = make_schedule("linear")


def test_posterior_mean_matches_numerical_integration_in_1d():
    mix = make_mixture(SCHED, [[-1.0], [1.5]], [0.3, 0.5], [0.7, 0.3])
    x0 = np.linspace(-6, 6, 200001)
    dens = 0.7 * np.exp(-0.5 * ((x0 + 1) / 0.3) ** 2) / 0.3 + 0.3 * np.exp(-0.5 * ((x0 - 1.5) / 0.5) ** 2) / 0.5
    for t, xt in [(0.1, 0.3), (0.4, -0.8), (0.8, 1.1)]:
        a, s = (float(v) for v in SCHED.alpha_sigma(jnp.asarray(t)))
        like = np.exp(-0.5 * ((xt - a * x0) / s) ** 2)
        expected = np.sum(x0 * dens * like) / np.sum(dens * like)
        got, cache = mix(None, jnp.asarray([[xt]]), jnp.asarray([t]))
        assert cache == {}
        assert float(got.x0[0, 0]) == pytest.approx(expected, abs=2e-4)
        # eps is consistent: x_t = alpha x0 + sigma eps
        assert float(a * got.x0[0, 0] + s * got.eps[0, 0]) == pytest.approx(xt, abs=1e-5)


def test_sample_data_has_the_mixture_moments():
    mix = make_mixture(SCHED, [[-1.0, 0.5], [1.0, -0.5]], [0.3, 0.2], [0.6, 0.4])
    x = np.asarray(mix.sample_data(jax.random.PRNGKey(0), 200_000))
    mean, var = mix.moments()
    np.testing.assert_allclose(x.mean(0), np.asarray(mean), atol=0.01)
    np.testing.assert_allclose(x.var(0), np.asarray(var), rtol=0.01)


def test_reference_ode_is_the_affine_map_for_one_gaussian():
    """One Gaussian: the flow maps x_t to mu + s (x_t - alpha_t mu) / std_t at any time."""
    sched = CosineLogSNRSchedule(-10.0, 10.0)
    mix = make_mixture(sched, [[0.5, -0.2]], [0.3])
    x1 = np.random.default_rng(0).normal(size=(8, 2))
    out = probability_flow_reference(mix, x1, 1.0, 0.1)

    def std(t):
        a, s = (float(v) for v in sched.alpha_sigma(jnp.asarray(t)))
        return a, np.sqrt(a**2 * 0.09 + s**2)

    a1, s1 = std(1.0)
    a2, s2 = std(0.1)
    mu = np.array([0.5, -0.2])
    z = (x1 - a1 * mu) / s1  # standardised; the flow keeps it
    np.testing.assert_allclose(out, a2 * mu + s2 * z, atol=1e-6)


def test_time_of_any_batch_shape():
    mix = make_mixture(SCHED, [[0.0, 0.0, 0.0, 0.0]], [1.0])
    x = jnp.ones((3, 2, 2, 1))
    pred, _ = mix(None, x, jnp.array([0.1, 0.5, 0.9]))
    a, s = SCHED.alpha_sigma(jnp.array([0.1, 0.5, 0.9]))
    # N(0, 1) data: E[x0 | x_t] = alpha x_t
    np.testing.assert_allclose(np.asarray(pred.x0), np.asarray(bcast_right(a, x) * x), rtol=1e-5)
