"""Sharded training on 8 fake CPU devices equals one device; checkpoints move between meshes."""

import functools

import jax
import numpy as np
import pytest

from diffusion.train import checkpoint
from diffusion.train.setup import abstract_state, init_state, jit_train_step
from diffusion.train.sharding import global_batch, leaf_spec, make_mesh
from tests.train.helpers import (digits_batch, make_state_fn, make_video_state_fn, train_step_fn, video_batch,
                                 video_train_step_fn)

pytestmark = pytest.mark.skipif(len(jax.devices()) < 8, reason="needs 8 (fake) devices")


def _run(mesh, steps=2, video=False):
    make = make_video_state_fn() if video else make_state_fn()
    _, shardings = abstract_state(make, mesh, min_fsdp_size=1024)  # the tiny net has no 2^14 leaves
    state = init_state(make, shardings, mesh)
    step = jit_train_step(video_train_step_fn() if video else train_step_fn(), shardings, mesh)
    metrics = None
    for i in range(steps):
        batch = video_batch(16, offset=16 * i) if video else digits_batch(32, offset=32 * i)
        state, metrics = step(state, global_batch(batch, mesh))
    return state, metrics, shardings


@functools.lru_cache(maxsize=None)
def _sharded(video):
    """2 steps on the (4, 2) mesh, once: the equality and the checkpoint tests share it."""
    return _run(make_mesh(4, 2), video=video)


@pytest.mark.parametrize("video", [False, True], ids=["image", "video"])
def test_sharded_step_equals_single_device_step(video):
    """Also for the video UNet with FVDM's per-frame times (p = 0.5: the per-batch coin and
    the per-frame draws come from the same rng on both meshes)."""
    single, m1, _ = _run(make_mesh(1, 1, jax.devices()[:1]), video=video)
    sharded, m8, shardings = _sharded(video)
    # something really is split over the fsdp axis
    specs = [s.spec for s in jax.tree.leaves(shardings.params)]
    assert any("fsdp" in tuple(sp) for sp in specs)
    assert float(m1["loss"]) == pytest.approx(float(m8["loss"]), rel=1e-5)
    for a, b in zip(jax.tree.leaves(single.params), jax.tree.leaves(sharded.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_checkpoint_restores_onto_another_mesh(tmp_path):
    state, _, _ = _sharded(False)
    mngr = checkpoint.make_manager(tmp_path, keep_last=2)
    checkpoint.save(mngr, 1, state, {"note": "4x2"})
    mngr.wait_until_finished()
    for mesh in (make_mesh(8, 1), make_mesh(2, 4), make_mesh(1, 1, jax.devices()[:1])):
        abstract, shardings = abstract_state(make_state_fn(), mesh, min_fsdp_size=1024)
        restored, verified = checkpoint.restore(mngr, 1, abstract)
        assert verified  # the fingerprint taken on the 4x2 mesh matches on this one
        for a, b, s in zip(jax.tree.leaves(state), jax.tree.leaves(restored), jax.tree.leaves(shardings)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
            assert b.sharding == s
    assert checkpoint.restore_config(mngr) == {"note": "4x2"}
    mngr.close()


def test_leaf_spec_rules():
    assert leaf_spec((3, 3, 64, 128), 2) == jax.sharding.PartitionSpec(None, None, None, "fsdp")
    assert leaf_spec((10,), 2) == jax.sharding.PartitionSpec()  # small: replicated
    assert leaf_spec((3, 3, 129, 127), 2) == jax.sharding.PartitionSpec()  # nothing divisible
    assert leaf_spec((3, 3, 64, 128), 1) == jax.sharding.PartitionSpec()


def test_bad_mesh_is_a_clear_error():
    with pytest.raises(ValueError, match="product is 8"):
        make_mesh(3, 2)
    with pytest.raises(ValueError, match="not divisible"):
        global_batch(digits_batch(12), make_mesh(8, 1))
