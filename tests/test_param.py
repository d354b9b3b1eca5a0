"""eps / x0 / v conversions against their closed forms, including per-frame [B, F] times."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion.param import ddim_renoise, forward_noise, to_prediction, v_from
from diffusion.schedules import bcast_right, make_schedule


def _setup(t_shape, x_shape):
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
    x0 = jax.random.normal(k1, x_shape)
    eps = jax.random.normal(k2, x_shape)
    t = jax.random.uniform(k3, t_shape, minval=0.05, maxval=0.95)
    a, s = make_schedule("cosine").alpha_sigma(t)
    x_t = bcast_right(a, x0) * x0 + bcast_right(s, x0) * eps
    return x0, eps, a, s, x_t


@pytest.mark.parametrize("t_shape,x_shape", [((4,), (4, 8, 8, 1)), ((2, 3), (2, 3, 8, 8, 1))])
@pytest.mark.parametrize("pred_type", ["eps", "x0", "v"])
def test_any_parameterisation_recovers_x0_and_eps(pred_type, t_shape, x_shape):
    x0, eps, a, s, x_t = _setup(t_shape, x_shape)
    v = bcast_right(a, x0) * eps - bcast_right(s, x0) * x0  # closed form of v
    raw = {"eps": eps, "x0": x0, "v": v}[pred_type]
    pred = to_prediction(raw, pred_type, x_t, a, s)
    np.testing.assert_allclose(np.asarray(pred.x0), np.asarray(x0), atol=2e-5)
    np.testing.assert_allclose(np.asarray(pred.eps), np.asarray(eps), atol=2e-5)
    np.testing.assert_allclose(np.asarray(v_from(pred, a, s)), np.asarray(v), atol=2e-5)
    np.testing.assert_allclose(np.asarray(ddim_renoise(pred, a, s)), np.asarray(x_t), atol=2e-5)


@pytest.mark.parametrize("t_shape,x_shape", [((4,), (4, 8, 8, 1)), ((2, 3), (2, 3, 8, 8, 1))])
def test_forward_noise_is_the_closed_form_per_time_entry(t_shape, x_shape):
    """``x_t = alpha(t) x0 + sigma(t) eps`` against float64 NumPy, each [B, F] entry its own t."""
    x0, eps, a, s, _ = _setup(t_shape, x_shape)
    t = jax.random.uniform(jax.random.PRNGKey(3), t_shape, minval=0.05, maxval=0.95)
    sched = make_schedule("cosine")
    got = forward_noise(sched, x0, eps, t)
    a64, s64 = (np.asarray(v, np.float64).reshape(t_shape + (1,) * (len(x_shape) - len(t_shape)))
                for v in sched.alpha_sigma(t))
    np.testing.assert_allclose(np.asarray(got), a64 * np.asarray(x0, np.float64) + s64 * np.asarray(eps, np.float64),
                               rtol=1e-6, atol=1e-6)


def test_per_frame_times_differ_per_frame():
    """With [B, F] times each frame uses its own alpha/sigma (not the first frame's)."""
    x0, eps, a, s, x_t = _setup((2, 3), (2, 3, 4, 4, 1))
    pred = to_prediction(eps, "eps", x_t, a, s)
    for f in range(3):
        expect = (x_t[:, f] - s[:, f, None, None, None] * eps[:, f]) / a[:, f, None, None, None]
        np.testing.assert_allclose(np.asarray(pred.x0[:, f]), np.asarray(expect), rtol=1e-6)


def test_unknown_prediction_type():
    with pytest.raises(ValueError, match="expected one of"):
        to_prediction(jnp.zeros(2), "score", jnp.zeros(2), jnp.ones(2), jnp.ones(2))
