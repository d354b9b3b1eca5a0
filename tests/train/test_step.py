"""The training step: it learns, it skips non-finite updates, the EMA follows."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion.train.step import ema_decay_at
from tests.train.helpers import digits_batch, make_state_fn, train_step_fn


@pytest.fixture(scope="module")
def step():
    return jax.jit(train_step_fn())


def test_training_lowers_the_loss(step):
    state = make_state_fn()()
    batch = digits_batch(32)
    losses = []
    for _ in range(80):
        state, m = step(state, batch)
        losses.append(float(m["loss"]))
    assert np.mean(losses[-10:]) < 0.6 * np.mean(losses[:10])
    assert int(state.step) == 80 and int(state.skipped) == 0


def test_nan_batch_is_skipped_and_counted(step):
    state, _ = step(make_state_fn()(), digits_batch(32))
    bad = digits_batch(32)
    bad["image"] = bad["image"].copy()
    bad["image"][3, 2, 2, 0] = np.nan
    new, m = step(state, bad)
    assert not bool(m["finite"])
    assert int(new.skipped) == 1 and int(new.consecutive_skipped) == 1 and int(new.step) == int(state.step) + 1
    for a, b in zip(jax.tree.leaves((new.params, new.ema_params, new.opt_state)),
                    jax.tree.leaves((state.params, state.ema_params, state.opt_state))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    new, _ = step(new, bad)
    assert int(new.consecutive_skipped) == 2
    new, m = step(new, digits_batch(32))  # a finite step resets the run of skips
    assert bool(m["finite"]) and int(new.consecutive_skipped) == 0 and int(new.skipped) == 2


def test_ema_tracks_params_with_warmup():
    assert float(ema_decay_at(jnp.asarray(0), 0.999)) == pytest.approx(0.1)
    assert float(ema_decay_at(jnp.asarray(10**6), 0.999)) == pytest.approx(0.999)
    state = make_state_fn()()
    step = jax.jit(train_step_fn(ema_decay=0.5))
    new, _ = step(state, digits_batch(16))
    d = 0.1  # min(0.5, 1/10) at step 0
    for e, p0, p1 in zip(jax.tree.leaves(new.ema_params), jax.tree.leaves(state.params), jax.tree.leaves(new.params)):
        np.testing.assert_allclose(np.asarray(e), d * np.asarray(p0) + (1 - d) * np.asarray(p1), rtol=1e-5, atol=1e-7)


def test_a_batch_with_a_posterior_std_is_sampled_from_the_step_key():
    """``latent_std`` in the batch (``data.latent_sample``): the loss sees ``mean + std * eps``,
    diffusers' ``latent_dist.sample()``, with ``eps`` from the step's key (a resumed step draws
    the same) and a fresh draw each step; a batch without it reaches the loss unchanged."""
    import optax

    from diffusion.train.state import create_train_state
    from diffusion.train.step import LATENT_STD, LATENT_STREAM, make_train_step

    def loss_fn(params, batch, rng, state):
        return jnp.sum(params["w"] * batch["image"]), {"seen": batch["image"]}

    step = jax.jit(make_train_step(loss_fn, optax.sgd(0.0), 0.0))
    state = create_train_state({"w": jnp.ones((2, 3))}, optax.sgd(0.0), jax.random.PRNGKey(5))
    mean, std = jnp.arange(6.0).reshape(2, 3), jnp.full((2, 3), 0.5).at[0, 0].set(2.0)
    first, m0 = step(state, {"image": mean, LATENT_STD: std})
    eps = jax.random.normal(jax.random.fold_in(jax.random.fold_in(state.rng, 0), LATENT_STREAM), (2, 3))
    np.testing.assert_allclose(m0["seen"], mean + std * eps, rtol=1e-6)
    _, again = step(state, {"image": mean, LATENT_STD: std})
    np.testing.assert_array_equal(again["seen"], m0["seen"])
    _, m1 = step(first, {"image": mean, LATENT_STD: std})
    assert np.abs(np.asarray(m1["seen"] - m0["seen"])).min() > 0  # another step, another draw
    _, plain = step(state, {"image": mean})
    np.testing.assert_array_equal(plain["seen"], mean)
