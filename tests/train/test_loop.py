"""The training loop with a trivial model: logging, checkpoints, the non-finite guard."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from diffusion.data.pipeline import make_train_iterator
from diffusion.data.sources import ArraySource
from diffusion.train import checkpoint
from diffusion.train.loop import Callback, LoopSettings, NonFiniteError, run
from diffusion.train.setup import state_factory
from diffusion.train.step import make_train_step
from diffusion.train.writer import MetricWriter, read_metrics

OPT = optax.sgd(4.0)


def loss_fn(params, batch, rng, state):
    return jnp.mean((params["w"] - batch["image"]) ** 2), {}


def _setup(images, tmp_path):
    make = state_factory(lambda k: {"w": jnp.ones((4, 4, 1))}, OPT, jax.random.PRNGKey(0))
    state = jax.jit(make)()
    it = make_train_iterator(ArraySource(images, np.zeros(len(images), np.int32)), 4, 0,
                             process_index=0, process_count=1)
    step = jax.jit(make_train_step(loss_fn, OPT, 0.9), donate_argnums=0)
    return state, it, step, checkpoint.make_manager(tmp_path, keep_last=10)


def test_loop_logs_checkpoints_and_calls_back(tmp_path):
    images = np.full((16, 4, 4, 1), 0.5, np.float32)
    state, it, step, mngr = _setup(images, tmp_path)
    calls = []
    cb = Callback(lambda s, st: calls.append(s) or {"extra": 1.0}, every=3, at_end=True)
    state = run(state, step, it, lambda b: b, mngr, {"cfg": 1}, LoopSettings(7, log_every=2, ckpt_every=4, progress=False),
                MetricWriter(tmp_path, tensorboard=False), [cb])
    assert int(state.step) == 7 and calls == [3, 6, 7]
    assert mngr.all_steps() == [4, 7]
    recs = read_metrics(tmp_path)
    assert [r["step"] for r in recs if "loss" in r] == [2, 4, 6, 7]
    losses = [r["loss"] for r in recs if "loss" in r]
    assert losses == sorted(losses, reverse=True) and losses[-1] < 0.1 * losses[0]  # w -> 0.5
    assert [r["step"] for r in recs if "extra" in r] == [3, 6, 7]
    mngr.close()


def test_nonfinite_run_stops_without_a_bad_checkpoint(tmp_path):
    images = np.full((16, 4, 4, 1), np.nan, np.float32)
    state, it, step, mngr = _setup(images, tmp_path)
    with pytest.raises(NonFiniteError, match="consecutive non-finite"):
        run(state, step, it, lambda b: b, mngr, {}, LoopSettings(50, log_every=1, ckpt_every=2,
                                                                max_consecutive_nonfinite=3, progress=False),
            MetricWriter(tmp_path, tensorboard=False))
    mngr.wait_until_finished()
    assert max(mngr.all_steps()) < 3  # no save once the streak hit the limit
    for s in mngr.all_steps():  # whatever was saved holds the untouched, finite params
        restored = checkpoint.restore(mngr, s, jax.eval_shape(lambda: state))
        np.testing.assert_array_equal(np.asarray(restored.params["w"]), 1.0)
        assert int(restored.skipped) == s
    mngr.close()


def test_keep_last_plus_keep_every(tmp_path):
    state = jax.jit(state_factory(lambda k: {"w": jnp.ones((2,))}, OPT, jax.random.PRNGKey(0)))()
    mngr = checkpoint.make_manager(tmp_path, keep_last=2, keep_every=4, async_save=False)
    for s in range(1, 10):
        checkpoint.save(mngr, s, state, {})
    mngr.wait_until_finished()
    assert mngr.all_steps() == [4, 8, 9]  # every 4th kept, plus the newest two (8, 9)
    mngr.close()
