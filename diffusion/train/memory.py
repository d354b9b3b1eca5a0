"""Per-device memory of a train state, from abstract shapes and shardings (nothing is
allocated): what a run prints before it creates its state, and the check that refuses a
config whose state cannot fit the devices.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np


def shard_bytes(tree: Any) -> int:
    """Bytes one device holds of ``tree``: every leaf a ``ShapeDtypeStruct`` (or array)
    with a ``sharding``; its shard's shape times its itemsize (the largest shard when a
    split is uneven)."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        shape = leaf.sharding.shard_shape(tuple(leaf.shape)) if getattr(leaf, "sharding", None) else leaf.shape
        total += int(np.prod(shape, dtype=np.int64)) * np.dtype(leaf.dtype).itemsize
    return total


@dataclasses.dataclass(frozen=True)
class StateMemory:
    """Bytes per device of a train state's parts."""

    params: int
    optimizer: int
    other: int  # EMA params, a method's extra state (teacher params, references, ...)

    @property
    def total(self) -> int:
        return self.params + self.optimizer + self.other

    def describe(self, capacity: int | None) -> str:
        gib = lambda b: f"{b / 2**30:.2f} GiB"  # noqa: E731
        of = f" of {gib(capacity)} on the device" if capacity else ""
        return (f"train state per device: params {gib(self.params)}, optimizer {gib(self.optimizer)}, "
                f"EMA and method state {gib(self.other)}: {gib(self.total)}{of} (activations come on top)")


def state_memory(abstract_state: Any) -> StateMemory:
    """The per-device bytes of a ``TrainState`` of abstract leaves with shardings
    (``diffusion.train.setup.abstract_state``)."""
    params, optimizer = shard_bytes(abstract_state.params), shard_bytes(abstract_state.opt_state)
    return StateMemory(params, optimizer, shard_bytes(abstract_state) - params - optimizer)


def device_capacity(device: Any = None) -> int | None:
    """The device's memory in bytes where the backend reports it (GPU, TPU), else None (CPU)."""
    device = device or jax.local_devices()[0]
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001 - backends without memory statistics
        return None
    return int(stats["bytes_limit"]) if stats and "bytes_limit" in stats else None


def check_fits(memory: StateMemory, capacity: int | None) -> None:
    """Raises ``ValueError`` (with the estimate) when the state alone exceeds ``capacity``."""
    if capacity is not None and memory.total > capacity:
        raise ValueError(f"this config cannot fit the devices: {memory.describe(capacity)}. Split large parameters "
                         "over more devices (--config.mesh.fsdp), use LoRA (--config.train.lora_rank), or a smaller "
                         "model")
