"""FVDM's probabilistic timestep sampling and the per-frame loss."""

import jax
import jax.numpy as jnp
import numpy as np

from diffusion.losses import denoising_loss
from diffusion.param import Prediction, forward_noise
from diffusion.schedules import make_schedule
from diffusion.train.objective import video_times

SCHED = make_schedule("linear", 1000)


def _draws(p, n=400):
    keys = jax.random.split(jax.random.PRNGKey(0), n)
    return np.asarray(jax.vmap(lambda k: video_times(k, 4, 6, p, SCHED))(keys))  # [n, 4, 6]


def test_per_frame_draws_happen_per_batch_with_probability_p():
    t = _draws(0.2)
    own = (t != t[..., :1]).any(axis=-1)  # [n, 4]: a sample whose frames differ
    per_batch = own.any(axis=-1)
    assert (own.all(axis=-1) | ~per_batch).all()  # the coin is one per batch
    assert 0.14 < per_batch.mean() < 0.26  # 0.2 +- 3 standard errors at n = 400
    assert np.allclose(t * 1000, np.round(t * 1000)) and t.min() >= 1e-3 and t.max() <= 1.0


def test_p_zero_is_a_standard_video_model_and_p_one_always_per_frame():
    assert (_draws(0.0, 50) == _draws(0.0, 50)[..., :1]).all()
    t = _draws(1.0, 50)
    assert (t != t[..., :1]).any(axis=-1).all()


def test_per_frame_forward_process_and_loss_match_float64():
    key = jax.random.PRNGKey(1)
    x0 = jax.random.normal(key, (2, 3, 4, 4, 1))
    eps = jax.random.normal(jax.random.PRNGKey(2), x0.shape)
    t = jnp.array([[0.001, 0.5, 1.0], [0.3, 0.3, 0.9]])
    x_t = np.asarray(forward_noise(SCHED, x0, eps, t))
    betas = np.linspace(1e-4, 0.02, 1000, dtype=np.float64)
    abar = np.cumprod(1 - betas)
    n = np.round(np.asarray(t, np.float64) * 1000).astype(int)
    a = np.sqrt(abar[n - 1])[..., None, None, None]
    s = np.sqrt(1 - abar[n - 1])[..., None, None, None]
    ref = a * np.asarray(x0, np.float64) + s * np.asarray(eps, np.float64)
    np.testing.assert_allclose(x_t, ref, rtol=1e-5, atol=1e-5)
    pred = Prediction(x0=x0 + 0.1, eps=eps - 0.2)
    loss, per_t = denoising_loss(pred, x0, eps, t, SCHED, "eps")
    assert per_t.shape == (2, 3)
    np.testing.assert_allclose(np.asarray(per_t), 0.04, rtol=1e-5)
    _, per_x0 = denoising_loss(pred, x0, eps, t, SCHED, "snr_trunc")
    snr = abar[n - 1] / (1 - abar[n - 1])
    np.testing.assert_allclose(np.asarray(per_x0), 0.01 * np.maximum(snr, 1.0), rtol=1e-4)
