"""Checkpoint fingerprints: a damaged checkpoint is detected and named, and resuming falls
back to the newest good one, moving the damaged one aside (docs/design/workdir_safety.md)."""

import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from diffusion.train import checkpoint
from diffusion.train.checkpoint import DamagedCheckpoint
from diffusion.train.state import create_train_state


def state_at(step: int):
    params = {"w": jnp.arange(4096, dtype=jnp.float32) * (1 + step), "b": jnp.full((3,), float(step))}
    return create_train_state(params, optax.adam(1e-3), jax.random.PRNGKey(step)).replace(step=jnp.asarray(step))


def saved_run(tmp_path, steps=(1, 2, 3)):
    mngr = checkpoint.make_manager(tmp_path, keep_last=5)
    for s in steps:
        checkpoint.save(mngr, s, state_at(s), {"step": s})
    mngr.close()
    return tmp_path


def largest_file(step_dir: pathlib.Path) -> pathlib.Path:
    return max((p for p in (step_dir / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def test_fingerprint_sees_one_flipped_bit_and_swapped_values():
    tree = {"a": jnp.arange(10, dtype=jnp.float32), "k": jax.random.PRNGKey(0), "n": jnp.asarray(3)}
    base = checkpoint.fingerprint(tree)
    assert set(base) == {"a", "k", "n"}
    words = np.asarray(tree["a"]).view(np.uint32).copy()
    words[7] ^= 1 << 3  # one bit of one float
    flipped = checkpoint.fingerprint({**tree, "a": jnp.asarray(words.view(np.float32))})
    assert flipped["a"][0] != base["a"][0] and flipped["k"] == base["k"]
    swapped = np.asarray(tree["a"]).copy()
    swapped[[2, 5]] = swapped[[5, 2]]
    moved = checkpoint.fingerprint({**tree, "a": jnp.asarray(swapped)})
    assert moved["a"][0] == base["a"][0] and moved["a"][1] != base["a"][1]  # same sum, other order


def test_a_changed_array_is_named(tmp_path):
    run = saved_run(tmp_path)
    mngr = checkpoint.make_manager(run, keep_last=5)
    abstract = jax.eval_shape(lambda: state_at(0))
    state, verified = checkpoint.restore(mngr, 3, abstract)
    assert int(state.step) == 3 and verified  # an intact one verifies
    mngr.close()
    # rewrite the saved fingerprint of one array: as if the state's bytes had changed
    fp = next((run / "checkpoints" / "3" / "fingerprint").rglob("metadata"))
    fp.write_text(fp.read_text().replace('"params/w": [', '"params/w": [1, '))
    mngr = checkpoint.make_manager(run, keep_last=5)
    with pytest.raises(DamagedCheckpoint, match=r"checkpoints/3/state: array params/w does not match"):
        checkpoint.restore(mngr, 3, abstract)
    mngr.close()


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_resume_falls_back_to_the_newest_good_checkpoint(tmp_path, damage):
    run = saved_run(tmp_path)
    target = largest_file(run / "checkpoints" / "3")
    data = bytearray(target.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
        target.write_bytes(bytes(data))
    elif damage == "truncate":
        target.write_bytes(bytes(data[: len(data) // 3]))
    else:
        target.unlink()
    log = []
    mngr, state, step = checkpoint.restore_newest_good(
        run, lambda: checkpoint.make_manager(run, keep_last=5), jax.eval_shape(lambda: state_at(0)), None, log.append)
    assert step == 2 and int(state.step) == 2
    np.testing.assert_array_equal(np.asarray(state.params["w"]), np.asarray(state_at(2).params["w"]))
    assert len(log) == 1 and log[0].startswith("checkpoint 3 is damaged") and "trying step 2" in log[0]
    assert mngr.all_steps() == [1, 2] and (run / "damaged_checkpoints" / "3" / "state").is_dir()  # kept, aside
    mngr.close()


def test_a_checkpoint_of_another_structure_is_an_error_and_stays_in_place(tmp_path):
    """Readable files that do not fit this run (a changed model) are not 'damaged'."""
    run = saved_run(tmp_path, steps=(1, 2))
    other = jax.eval_shape(lambda: state_at(0).replace(params={**state_at(0).params, "c": jnp.zeros((2,))}))
    with pytest.raises(ValueError, match="reads fine but does not fit this run's state") as e:
        checkpoint.restore_newest_good(run, lambda: checkpoint.make_manager(run), other, None, lambda _: None)
    assert not isinstance(e.value, DamagedCheckpoint)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["1", "2"]
    assert not (run / "damaged_checkpoints").exists()


def test_every_checkpoint_damaged_is_an_error_not_a_fresh_start(tmp_path):
    run = saved_run(tmp_path, steps=(1,))
    largest_file(run / "checkpoints" / "1").write_bytes(b"garbage")
    with pytest.raises(DamagedCheckpoint, match="every checkpoint in .* is damaged"):
        checkpoint.restore_newest_good(run, lambda: checkpoint.make_manager(run), jax.eval_shape(lambda: state_at(0)),
                                       None, lambda _: None)


def test_a_checkpoint_from_before_fingerprints_restores_with_a_note(tmp_path):
    run = saved_run(tmp_path, steps=(4,))
    shutil.rmtree(run / "checkpoints" / "4" / "fingerprint")
    log = []
    mngr, state, step = checkpoint.restore_newest_good(
        run, lambda: checkpoint.make_manager(run), jax.eval_shape(lambda: state_at(0)), None, log.append)
    assert step == 4 and log == ["checkpoint 4 was written before checkpoints carried fingerprints: "
                                 "restored unverified"]
    mngr.close()


def test_sampling_refuses_a_damaged_checkpoint_by_name(tmp_path):
    run = saved_run(tmp_path, steps=(5,))
    fp = next((run / "checkpoints" / "5" / "fingerprint").rglob("metadata"))
    fp.write_text(fp.read_text().replace('"ema_params/b": [', '"ema_params/b": [7, '))
    abstract = {"ema_params": jax.eval_shape(lambda: state_at(0).ema_params)}
    with pytest.raises(DamagedCheckpoint, match="array ema_params/b does not match"):
        checkpoint.restore_subtree(checkpoint.reader(run), 5, abstract)
    assert checkpoint.restore_subtree(checkpoint.reader(run), 5, {"ema_params": {
        "w": jax.ShapeDtypeStruct((4096,), jnp.float32)}})["ema_params"]["w"].shape == (4096,)  # w is intact


def test_keep_last_zero_is_refused():
    with pytest.raises(ValueError, match="keep_last must be >= 1"):
        checkpoint.make_manager("/nonexistent", keep_last=0)


@pytest.mark.parametrize("leaves,size", [(600, 300), (8, 200_000)])
def test_size_estimate_bounds_what_a_save_writes(tmp_path, leaves, size):
    """The free-space check before a save uses this bound: random (incompressible) arrays,
    many small leaves (metadata-heavy, like a UNet) or a few large ones."""
    rng = np.random.default_rng(0)
    tree = {f"p{i:03d}": jnp.asarray(rng.standard_normal(size, np.float32)) for i in range(leaves)}
    mngr = checkpoint.make_manager(tmp_path, keep_last=2, async_save=False)
    checkpoint.save(mngr, 1, tree, {"config": 1})
    mngr.wait_until_finished()
    mngr.close()
    written = sum(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file())
    assert 0.5 * leaves * size * 4 < written <= checkpoint.size_estimate(tree) < 2 * written + 2**21
