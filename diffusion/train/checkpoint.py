"""Orbax checkpoints of a run: train state, resolved config (JSON) and data-iterator state.

Layout: ``<workdir>/checkpoints/<step>/{state,config,data}``. Saves are asynchronous;
only committed steps are listed, so a save killed half-way never hides the last good
one. Restoring takes an abstract state whose leaves carry the *target* shardings, so a
checkpoint written on one mesh lands on another.
"""

from __future__ import annotations

import pathlib
from typing import Any

import grain
import orbax.checkpoint as ocp


def make_manager(workdir: str | pathlib.Path, keep_last: int = 3, keep_every: int | None = None,
                 async_save: bool = True) -> ocp.CheckpointManager:
    """A manager keeping the newest ``keep_last`` checkpoints plus every ``keep_every``-th step."""
    directory = pathlib.Path(workdir).absolute() / "checkpoints"
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep_last,
        keep_period=keep_every or None,
        enable_async_checkpointing=async_save,
        create=True,
    )
    return ocp.CheckpointManager(directory, options=options)


def save(manager: ocp.CheckpointManager, step: int, state: Any, config: dict, data_iter: Any = None,
         force: bool = False) -> bool:
    """Starts an (async) save of ``state``, ``config`` and ``data_iter`` at ``step``."""
    items = {"state": ocp.args.StandardSave(state), "config": ocp.args.JsonSave(config)}
    if data_iter is not None:
        items["data"] = grain.checkpoint.CheckpointSave(data_iter)
    return manager.save(step, args=ocp.args.Composite(**items), force=force)


def restore(manager: ocp.CheckpointManager, step: int, abstract_state: Any, data_iter: Any = None) -> Any:
    """Restores ``state`` at ``step`` onto the shardings in ``abstract_state``; when
    ``data_iter`` is given, its position is restored in place too."""
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iter is not None:
        items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
    return manager.restore(step, args=ocp.args.Composite(**items))["state"]


def restore_subtree(manager: ocp.CheckpointManager, step: int, abstract: dict) -> dict:
    """Restores only some fields of the saved state, e.g. ``{"ema_params": abstract}``
    for sampling (the optimizer state is never read); the abstract leaves carry the
    target shardings."""
    args = ocp.args.PyTreeRestore(abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
                                  partial_restore=True)
    return manager.restore(step, args=ocp.args.Composite(state=args))["state"]


def restore_config(manager: ocp.CheckpointManager, step: int | None = None) -> dict:
    """The resolved config saved with a checkpoint (the latest by default)."""
    step = manager.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {manager.directory}")
    return manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
