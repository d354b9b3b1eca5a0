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
