"""Loss weightings against their closed forms (as weights on the x0-space error)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion.losses import denoising_loss
from diffusion.param import to_prediction
from diffusion.schedules import bcast_right, make_schedule


@pytest.mark.parametrize("t_shape,x_shape", [((6,), (6, 4, 4, 1)), ((2, 3), (2, 3, 4, 4, 1))])
def test_weightings_closed_form(t_shape, x_shape):
    sched = make_schedule("linear")
    k = jax.random.split(jax.random.PRNGKey(1), 4)
    x0, eps = jax.random.normal(k[0], x_shape), jax.random.normal(k[1], x_shape)
    t = jax.random.uniform(k[2], t_shape, minval=0.01, maxval=1.0)
    a, s = sched.alpha_sigma(t)
    x_t = bcast_right(a, x0) * x0 + bcast_right(s, x0) * eps
    x0_hat = x0 + 0.1 * jax.random.normal(k[3], x_shape)  # an imperfect x0 prediction
    pred = to_prediction(x0_hat, "x0", x_t, a, s)

    axes = tuple(range(len(t_shape), len(x_shape)))
    x_mse = np.asarray(jnp.mean((x0_hat - x0) ** 2, axis=axes), np.float64)
    snr = np.asarray(a, np.float64) ** 2 / np.asarray(s, np.float64) ** 2
    expected = {"x0": x_mse, "eps": snr * x_mse, "v": (1 + snr) * x_mse, "snr_trunc": np.maximum(snr, 1) * x_mse}
    for w, exp in expected.items():
        loss, per_t = denoising_loss(pred, x0, eps, t, sched, w)
        assert per_t.shape == t_shape
        np.testing.assert_allclose(np.asarray(per_t), exp, rtol=2e-3, err_msg=w)
        assert float(loss) == pytest.approx(exp.mean(), rel=2e-3)


def test_perfect_prediction_has_zero_loss():
    sched = make_schedule("cosine")
    x0 = jnp.ones((2, 4, 4, 1)); eps = -jnp.ones((2, 4, 4, 1)); t = jnp.array([0.2, 0.7])
    a, s = sched.alpha_sigma(t)
    pred = to_prediction(eps, "eps", bcast_right(a, x0) * x0 + bcast_right(s, x0) * eps, a, s)
    for w in ["eps", "v", "x0"]:
        assert float(denoising_loss(pred, x0, eps, t, sched, w)[0]) < 1e-9


def test_unknown_weighting():
    with pytest.raises(ValueError, match="expected one of"):
        denoising_loss(None, None, None, jnp.zeros(1), make_schedule("linear"), "huber")
