"""FVDM's probabilistic timestep sampling (the coin per group of samples, as the reference
tosses it per GPU's local batch) and the per-frame loss."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion.losses import denoising_loss
from diffusion.param import Prediction, forward_noise
from diffusion.schedules import make_schedule
from diffusion.train.objective import REFERENCE_GROUP, make_diffusion_loss, video_times

SCHED = make_schedule("linear", 1000)


def _draws(p, n=400, batch=4, frames=6, group=0):
    keys = jax.random.split(jax.random.PRNGKey(0), n)
    return np.asarray(jax.vmap(lambda k: video_times(k, batch, frames, p, SCHED, group))(keys))  # [n, batch, frames]


def test_per_frame_draws_happen_per_batch_with_probability_p():
    """``group = 0``: one coin for the whole batch (Kairos before issue 26)."""
    t = _draws(0.2)
    own = (t != t[..., :1]).any(axis=-1)  # [n, 4]: a sample whose frames differ
    per_batch = own.any(axis=-1)
    assert (own.all(axis=-1) | ~per_batch).all()  # the coin is one per batch
    assert 0.14 < per_batch.mean() < 0.26  # 0.2 +- 3 standard errors at n = 400
    assert np.allclose(t * 1000, np.round(t * 1000)) and t.min() >= 1e-3 and t.max() <= 1.0


def test_the_coin_is_tossed_per_group_of_two_as_the_reference_tosses_it_per_rank():
    """FVDM@9373f998 ``train_video.py:340`` tosses once per step on each DDP rank, whose local
    batch is 2 (UCF101, Taichi, Sky): the default group. 400 batches of 16 at p = 0.2: the
    two samples of a pair share their coin, pairs are independent (the fraction of
    per-frame samples is p, and most batches mix both kinds), where one coin per batch never
    mixes."""
    assert REFERENCE_GROUP == 2
    t = _draws(0.2, batch=16, frames=8, group=2)
    own = (t != t[..., :1]).any(axis=-1)  # [400, 16]
    pairs = own.reshape(400, 8, 2)
    assert (pairs[..., 0] == pairs[..., 1]).all()
    assert abs(own.mean() - 0.2) < 0.06  # 0.197 here
    mixed = (own.any(axis=-1) & ~own.all(axis=-1)).sum()
    assert mixed >= 300  # 326 of 400; P(a batch of 8 pairs does not mix) = 0.8^8 + 0.2^8 = 0.168
    t0 = _draws(0.2, batch=16, frames=8, group=0)
    own0 = (t0 != t0[..., :1]).any(axis=-1)
    assert (own0.any(axis=-1) & ~own0.all(axis=-1)).sum() == 0
    # group 3 (the reference's FFS local batch) on a batch of 16: groups 0-4 of 3, the last of 1
    own3 = (lambda t: (t != t[..., :1]).any(axis=-1))(_draws(0.5, 200, batch=16, frames=8, group=3))
    for start in range(0, 15, 3):
        assert (own3[:, start:start + 3] == own3[:, start:start + 1]).all()
    assert (own3[:, 15] != own3[:, 12]).any()  # the short last group has a coin of its own
    # the default loss tosses per pair too, and a bad group is named
    assert video_times.__defaults__ == (REFERENCE_GROUP,)
    with pytest.raises(ValueError, match="per_frame_group"):
        make_diffusion_loss(None, per_frame_group=-1)


def test_p_zero_is_a_standard_video_model_and_p_one_always_per_frame():
    for group in (0, 2):
        assert (_draws(0.0, 50, group=group) == _draws(0.0, 50, group=group)[..., :1]).all()
        t = _draws(1.0, 50, group=group)
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
