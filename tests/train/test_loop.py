"""The training loop with a trivial model: logging, checkpoints, the non-finite guard."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from diffusion.data.pipeline import make_train_iterator
from diffusion.data.sources import ArraySource
from diffusion.train import checkpoint
from diffusion.train.loop import Callback, CheckpointWriteError, LoopSettings, NonFiniteError, run
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
    with pytest.raises(NonFiniteError, match="consecutive non-finite.*The newest checkpoint is none yet"):
        run(state, step, it, lambda b: b, mngr, {}, LoopSettings(50, log_every=1, ckpt_every=2,
                                                                max_consecutive_nonfinite=3, progress=False),
            MetricWriter(tmp_path, tensorboard=False))
    mngr.wait_until_finished()
    assert mngr.all_steps() == []  # nothing is saved during a streak
    mngr.close()


def blows_up_after(n):
    """A loss that turns NaN from step ``n`` on (the state is the loss's fourth argument)."""

    def fn(params, batch, rng, state):
        loss = jnp.mean((params["w"] - batch["image"]) ** 2)
        return jnp.where(state.step >= n, jnp.nan, loss), {}

    return fn


def test_no_checkpoint_during_a_streak_and_the_message_names_the_newest(tmp_path, capsys):
    """Steps 1-3 are finite (checkpoint at 2), then every loss is NaN: the step-4 save is
    skipped, and the error names step 2 as the newest checkpoint."""
    images = np.full((16, 4, 4, 1), 0.5, np.float32)
    state, it, _, mngr = _setup(images, tmp_path)
    step = jax.jit(make_train_step(blows_up_after(3), OPT, 0.9), donate_argnums=0)
    with pytest.raises(NonFiniteError, match="The newest checkpoint is step 2, written before this streak began"):
        run(state, step, it, lambda b: b, mngr, {}, LoopSettings(50, log_every=10, ckpt_every=2,
                                                                max_consecutive_nonfinite=4, progress=True),
            MetricWriter(tmp_path, tensorboard=False))
    mngr.wait_until_finished()
    assert mngr.all_steps() == [2]
    err = capsys.readouterr().err
    assert "not saving step 4: its last 1 update(s) were non-finite; the newest checkpoint is step 2" in err
    assert err.endswith("\n")  # the bar is closed before the error propagates: its message starts a line
    mngr.close()


class FailingManager:
    """A checkpoint manager whose first async save fails the way orbax reports a full disk:
    the writer threads' error is raised when the save is waited for."""

    def __init__(self, inner):
        self.inner, self.saves, self.directory = inner, 0, inner.directory

    def save(self, *args, **kwargs):
        self.saves += 1
        return self.inner.save(*args, **kwargs)

    def wait_until_finished(self):
        self.inner.wait_until_finished()
        if self.saves == 1:
            raise ValueError("OUT_OF_RANGE: Error writing \"w/0\" in OCDBT database: No space left on device\nmore")

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_a_failed_checkpoint_write_is_one_clear_error(tmp_path):
    images = np.full((16, 4, 4, 1), 0.5, np.float32)
    state, it, step, mngr = _setup(images, tmp_path)
    with pytest.raises(CheckpointWriteError) as e:
        run(state, step, it, lambda b: b, FailingManager(mngr), {}, LoopSettings(8, log_every=4, ckpt_every=2,
                                                                                 progress=False),
            MetricWriter(tmp_path, tensorboard=False))
    text = str(e.value)
    assert "could not write the checkpoint of step 2" in text and "No space left on device" in text
    assert "\n" not in text and "re-run the same command" in text
    mngr.wait_until_finished()
    mngr.close()


def test_a_checkpoint_that_cannot_fit_is_refused_before_writing(tmp_path, monkeypatch):
    import collections
    import shutil

    from diffusion.train import loop

    images = np.full((16, 4, 4, 1), 0.5, np.float32)
    state, it, step, mngr = _setup(images, tmp_path)
    need = checkpoint.size_estimate(state)
    leaves = jax.tree.leaves(state)
    arrays = sum(x.nbytes for x in leaves)
    assert arrays >= 2 * 16 * 4 and need == int(arrays * 1.1) + 2048 * len(leaves) + 2**20  # w, its EMA at least
    usage = collections.namedtuple("usage", "total used free")
    free = {"bytes": 10 * need}  # room for step 2, then the disk "fills"
    real = shutil.disk_usage

    def disk_usage(path):
        assert real(path)  # the checkpoint directory itself is asked
        return usage(0, 0, free["bytes"])

    def fill(s, st):
        free["bytes"] = need - 1

    monkeypatch.setattr(loop.shutil, "disk_usage", disk_usage)
    with pytest.raises(CheckpointWriteError) as e:
        run(state, step, it, lambda b: b, mngr, {}, LoopSettings(8, log_every=4, ckpt_every=2, progress=False),
            MetricWriter(tmp_path, tensorboard=False), [Callback(fill, every=3, at_end=False)])
    text = str(e.value)
    assert "not enough disk space for the checkpoint of step 4" in text and "MiB are free" in text
    assert "resumes from the newest checkpoint (step 2)" in text and "\n" not in text
    mngr.wait_until_finished()
    assert mngr.all_steps() == [2]  # step 4 was never started
    assert [r["step"] for r in read_metrics(tmp_path) if "checkpoint" in r] == [2]
    mngr.close()


def test_keep_last_plus_keep_every(tmp_path):
    state = jax.jit(state_factory(lambda k: {"w": jnp.ones((2,))}, OPT, jax.random.PRNGKey(0)))()
    mngr = checkpoint.make_manager(tmp_path, keep_last=2, keep_every=4, async_save=False)
    for s in range(1, 10):
        checkpoint.save(mngr, s, state, {})
    mngr.wait_until_finished()
    assert mngr.all_steps() == [4, 8, 9]  # every 4th kept, plus the newest two (8, 9)
    mngr.close()
