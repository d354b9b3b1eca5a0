"""Orbax checkpoints of a run: train state, resolved config (JSON), data-iterator state, and
a fingerprint of the state that says when a checkpoint is damaged (docs/design/workdir_safety.md).

Layout: ``<workdir>/checkpoints/<step>/{state,config,data,fingerprint}``. Saves are
asynchronous; only committed steps are listed, so a save killed half-way never hides the
last good one. Restoring takes an abstract state whose leaves carry the *target*
shardings, so a checkpoint written on one mesh lands on another. Every restore recomputes
the fingerprint and compares it with the saved one.
"""

from __future__ import annotations

import json
import pathlib
import shutil
from typing import Any, Callable

import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

DAMAGED_DIR = "damaged_checkpoints"  # where damaged checkpoints are moved, beside checkpoints/


DATA_POSITION = "data_position"  # the input iterator's position, JSON


class DamagedCheckpoint(ValueError):
    """A checkpoint that cannot be read, or whose arrays do not match their fingerprint."""


def make_manager(workdir: str | pathlib.Path, keep_last: int = 3, keep_every: int | None = None,
                 async_save: bool = True) -> ocp.CheckpointManager:
    """A manager keeping the newest ``keep_last`` checkpoints plus every ``keep_every``-th step."""
    if keep_last < 1:
        raise ValueError(f"keep_last must be >= 1 (it would delete every checkpoint), got {keep_last}")
    directory = pathlib.Path(workdir).absolute() / "checkpoints"
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep_last,
        keep_period=keep_every or None,
        enable_async_checkpointing=async_save,
        create=True,
    )
    return ocp.CheckpointManager(directory, options=options)


def reader(workdir: str | pathlib.Path) -> ocp.CheckpointManager:
    """A read-only manager (sampling, evaluation): creates, deletes and writes nothing."""
    options = ocp.CheckpointManagerOptions(read_only=True, create=False)
    return ocp.CheckpointManager(pathlib.Path(workdir).absolute() / "checkpoints", options=options)


def _path_name(path) -> str:
    """``ema_params/conv_in/kernel`` for a key path of a dataclass or of nested dicts."""
    parts = []
    for key in path:
        parts.append(str(getattr(key, "name", getattr(key, "key", getattr(key, "idx", key)))))
    return "/".join(parts)


MASK = (1 << 32) - 1
GOLDEN = np.uint32(2654435761)  # Knuth's multiplicative hash: weights each word by its index


def _words(x: np.ndarray) -> np.ndarray:
    """The bits of ``x`` as uint32 words (any dtype of 1, 2, 4 or 8 bytes)."""
    x = np.ascontiguousarray(x)
    if x.dtype == np.bool_ or x.dtype.itemsize in (1, 2):
        return x.view(np.uint8 if x.dtype.itemsize == 1 else np.uint16).astype(np.uint32)
    return x.view(np.uint32)  # 4 bytes: one word; 8 bytes: two


def _leaf_sums(x) -> tuple[int, int]:
    """``(sum, index-weighted sum)`` mod 2^32 of one array's words, from the shards this
    process holds (each distinct shard once): the same numbers on any mesh."""
    if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if isinstance(x, jax.Array) and (jax.process_count() == 1 or not x.is_fully_addressable):
        shards, shape = [(s.index, np.asarray(s.data)) for s in x.addressable_shards if s.replica_id == 0], x.shape
    else:  # a value every process holds whole (a host value, or restored onto each process's own device):
        # counted once, by process 0
        x = np.asarray(x)
        shards, shape = [(tuple(slice(None) for _ in x.shape), x)] if jax.process_index() == 0 else [], x.shape
    per_element = _words(np.zeros((1,), np.dtype(x.dtype))).size
    total, weighted = 0, 0
    for index, data in shards:
        words = _words(data).reshape(-1)
        flat = np.zeros((1,), np.uint64)  # the global row-major index of each element, then of each word
        for sl, n in zip(index, shape):
            flat = (flat[:, None] * np.uint64(n) + np.arange(*sl.indices(n), dtype=np.uint64)[None]).reshape(-1)
        flat = (flat[:, None] * np.uint64(per_element) + np.arange(per_element, dtype=np.uint64)[None]).reshape(-1)
        weights = flat.astype(np.uint32) * GOLDEN + np.uint32(1)  # wraps mod 2^32
        total += int(words.sum(dtype=np.uint64))
        weighted += int((words * weights).sum(dtype=np.uint64))  # each product wraps mod 2^32
    return total & MASK, weighted & MASK


def fingerprint(tree: Any) -> dict[str, list[int]]:
    """``{leaf path: [sum, weighted sum]}`` of the leaves' bits as uint32 words, mod 2^32.

    Exact integer arithmetic on the host, shard by shard: the same values give the same
    numbers on any mesh; one flipped bit changes the plain sum, swapped values the
    index-weighted one."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    sums = np.asarray([_leaf_sums(leaf) for _, leaf in flat], np.uint64).reshape(-1, 2)
    if jax.process_count() > 1:  # each process summed its own shards
        from jax.experimental import multihost_utils

        sums = np.asarray(multihost_utils.process_allgather(sums), np.uint64).sum(axis=0)
    return {_path_name(path): [int(a) & MASK, int(b) & MASK] for (path, _), (a, b) in zip(flat, sums)}


def save(manager: ocp.CheckpointManager, step: int, state: Any, config: dict, data_iter: Any = None,
         force: bool = False) -> bool:
    """Starts an (async) save of ``state``, its fingerprint, ``config`` and the position of
    ``data_iter`` at ``step`` (JSON, the same on every process: it resumes under any
    process count, ``diffusion.data.pipeline``)."""
    items = {"state": ocp.args.StandardSave(state), "config": ocp.args.JsonSave(config),
             "fingerprint": ocp.args.JsonSave(fingerprint(state))}
    if data_iter is not None:
        items[DATA_POSITION] = ocp.args.JsonSave(data_iter.get_state())
    return manager.save(step, args=ocp.args.Composite(**items), force=force)


def size_estimate(state: Any) -> int:
    """Bytes a checkpoint of ``state`` may take on disk while it is written, with a margin:
    the arrays (every process's shards land in one directory) plus 10%, 2 KiB of metadata
    per array (measured: ~1.4 KiB), 1 MiB for the config, fingerprint and data iterator."""
    leaves = jax.tree.leaves(state)
    arrays = sum(int(np.prod(np.shape(x))) * np.dtype(x.dtype).itemsize for x in leaves)
    return int(arrays * 1.1) + 2048 * len(leaves) + 2**20


def step_dir(manager: ocp.CheckpointManager, step: int) -> pathlib.Path:
    return pathlib.Path(str(manager.directory)) / str(step)


def _verify(manager: ocp.CheckpointManager, step: int, restored: Any) -> bool:
    """Raises DamagedCheckpoint when ``restored`` (the state, or ``{"ema_params": ...}`` of
    it) differs from the saved fingerprint. Returns whether there was one to compare (a
    checkpoint written before fingerprints has none)."""
    if not (step_dir(manager, step) / "fingerprint").exists():
        return False
    try:
        saved = manager.restore(step, args=ocp.args.Composite(fingerprint=ocp.args.JsonRestore()))["fingerprint"]
    except Exception as e:  # noqa: BLE001 - any read error means the file is damaged
        raise DamagedCheckpoint(f"{step_dir(manager, step)}/fingerprint cannot be read ({_first_line(e)})") from None
    for name, value in fingerprint(restored).items():
        if saved.get(name) != value:
            raise DamagedCheckpoint(f"{step_dir(manager, step)}/state: array {name} does not match the "
                                    "fingerprint saved with it (the files were changed or corrupted)")
    return True


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    first = text[0].split(" See full TensorStore details")[0][:300] if text else ""
    return f"{type(e).__name__}: {first}"


def _files_readable(manager: ocp.CheckpointManager, step: int) -> bool:
    """Whether the checkpoint's files read back as they were saved, independently of what
    this run expects (its state restored without a target, its JSON items parsed)."""
    try:
        manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
        for path in [*(step_dir(manager, step) / "data").glob("*.json"),
                     *(step_dir(manager, step) / DATA_POSITION).glob("metadata")]:
            json.loads(path.read_text())
        return True
    except MemoryError:
        raise
    except Exception:  # noqa: BLE001 - unreadable is what is asked
        return False


def _read_error(manager: ocp.CheckpointManager, step: int, error: Exception) -> Exception:
    """A restore failed: :class:`DamagedCheckpoint` when the files themselves do not read;
    otherwise a ValueError saying the checkpoint does not fit this run (left in place)."""
    if isinstance(error, MemoryError) or not _files_readable(manager, step):
        return error if isinstance(error, MemoryError) else DamagedCheckpoint(
            f"{step_dir(manager, step)} cannot be read ({_first_line(error)})")
    return ValueError(f"{step_dir(manager, step)} reads fine but does not fit this run's state ({_first_line(error)}); "
                      "it was left in place. Did the model, the optimizer or the method change since it was written? "
                      "Resume with the config it was written with, or use a new --workdir")


def restore(manager: ocp.CheckpointManager, step: int, abstract_state: Any, data_iter: Any = None
            ) -> tuple[Any, bool]:
    """Restores ``state`` at ``step`` onto the shardings in ``abstract_state`` and checks it
    against its fingerprint; when ``data_iter`` is given, its position is restored in place.
    Returns ``(state, verified)``: False for a checkpoint from before fingerprints.

    Raises:
      DamagedCheckpoint: the files cannot be read or do not match (names the file).
      ValueError: the files read fine but not into ``abstract_state`` (a changed model).
    """
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iter is not None and (step_dir(manager, step) / DATA_POSITION).exists():
        items[DATA_POSITION] = ocp.args.JsonRestore()
    elif data_iter is not None:  # written before positions: grain's per-process files
        items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
    try:
        restored = manager.restore(step, args=ocp.args.Composite(**items))
        state = restored["state"]
        if DATA_POSITION in items:
            data_iter.set_state(restored[DATA_POSITION])
    except Exception as e:  # noqa: BLE001 - truncated, deleted or garbage files, or another structure
        raise _read_error(manager, step, e) from None
    return state, _verify(manager, step, state)


def _move_aside(workdir: pathlib.Path, manager: ocp.CheckpointManager, step: int) -> pathlib.Path:
    """Moves a damaged checkpoint to ``damaged_checkpoints/<step>`` (``<step>-2``, ... if taken)."""
    target, n = workdir / DAMAGED_DIR / str(step), 1
    while target.exists():
        n += 1
        target = workdir / DAMAGED_DIR / f"{step}-{n}"
    if jax.process_index() == 0:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(step_dir(manager, step)), str(target))
    if jax.process_count() > 1:  # every process sees the move before it lists the steps again
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"kairos_damaged_checkpoint_{step}")
    return target


def restore_newest_good(workdir: str | pathlib.Path, open_manager: Callable[[], ocp.CheckpointManager],
                        abstract_state: Any, data_iter: Any, log: Callable[[str], None]
                        ) -> tuple[ocp.CheckpointManager, Any, int | None]:
    """The newest checkpoint that restores and matches its fingerprint.

    A damaged one (files that do not read, or arrays that do not match) is reported through
    ``log`` and moved to ``<workdir>/damaged_checkpoints/<step>`` (kept, out of the way of
    new saves); the next older one is tried. Returns ``(manager, state, step)`` with a
    manager from ``open_manager`` (re-opened after a move); ``(manager, None, None)`` when
    there is no checkpoint at all.

    Raises:
      DamagedCheckpoint: checkpoints exist but every one is damaged.
      ValueError: the newest checkpoint reads fine but does not fit ``abstract_state``.
    """
    workdir, damaged, manager = pathlib.Path(workdir), [], open_manager()
    while True:
        steps = sorted(manager.all_steps())
        if not steps:
            if damaged:
                raise DamagedCheckpoint(f"every checkpoint in {workdir / 'checkpoints'} is damaged "
                                        f"(moved to {workdir / DAMAGED_DIR}): " + "; ".join(damaged))
            return manager, None, None
        step = steps[-1]
        try:
            state, verified = restore(manager, step, abstract_state, data_iter)
        except DamagedCheckpoint as e:
            damaged.append(str(e))
            target = _move_aside(workdir, manager, step)
            log(f"checkpoint {step} is damaged: {e}. Moved it to {target}"
                + (f"; trying step {steps[-2]}" if len(steps) > 1 else ""))
            manager.close()
            manager = open_manager()
            continue
        except Exception:
            manager.close()
            raise
        if not verified:
            log(f"checkpoint {step} was written before checkpoints carried fingerprints: restored unverified")
        return manager, state, step


def restore_subtree(manager: ocp.CheckpointManager, step: int, abstract: dict) -> dict:
    """Restores only some fields of the saved state, e.g. ``{"ema_params": abstract}``
    for sampling (the optimizer state is never read), checked against the fingerprint;
    the abstract leaves carry the target shardings.

    Raises:
      DamagedCheckpoint: the checkpoint cannot be read or does not match (names the file).
      ValueError: the files read fine but not into ``abstract`` (a changed model).
    """
    args = ocp.args.PyTreeRestore(abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
                                  partial_restore=True)
    try:
        restored = manager.restore(step, args=ocp.args.Composite(state=args))["state"]
    except Exception as e:  # noqa: BLE001
        raise _read_error(manager, step, e) from None
    _verify(manager, step, restored)
    return restored


def restore_config(manager: ocp.CheckpointManager, step: int | None = None) -> dict:
    """The resolved config saved with a checkpoint (the latest by default)."""
    step = manager.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {manager.directory}")
    return manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
