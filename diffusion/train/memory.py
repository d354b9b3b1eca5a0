"""Per-device memory of a train state, from abstract shapes and shardings, and of the
activations a training step keeps for its backward pass, from a trace (nothing is
allocated): what a run prints before it creates its state, and the check that refuses a
config that cannot fit the devices.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

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


def activation_bytes(loss: Callable[..., jax.Array], *args: Any) -> int:
    """Bytes of what ``jax.grad(loss)(*args)`` keeps from its forward pass for the backward
    pass (the residuals; the arguments themselves are not counted): the bulk of a training
    step's activations. ``args`` may be ``ShapeDtypeStruct``; ``loss`` is traced, not run.
    Temporaries of single operations (an attention map being formed) come on top."""
    from jax._src.ad_checkpoint import saved_residuals  # the residuals jax.ad_checkpoint.print_saved_residuals shows

    return sum(int(np.prod(aval.shape, dtype=np.int64)) * np.dtype(aval.dtype).itemsize
               for aval, origin in saved_residuals(loss, *args) if not origin.startswith("from the argument"))


def gib(b: int) -> str:
    """``b`` bytes in GiB (MiB below one GiB)."""
    return f"{b / 2**30:.2f} GiB" if b >= 2**30 else f"{b / 2**20:.1f} MiB"


@dataclasses.dataclass(frozen=True)
class StateMemory:
    """Bytes per device of a train state's parts, and of a step's activations when
    estimated (``{remat policy: bytes}``, the configured policy first)."""

    params: int
    optimizer: int
    other: int  # EMA params, a method's extra state (teacher params, references, ...)
    activations: dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def state(self) -> int:
        return self.params + self.optimizer + self.other

    @property
    def total(self) -> int:
        """The state plus the configured policy's activations (when estimated)."""
        return self.state + next(iter(self.activations.values()), 0)

    def describe_state(self) -> str:
        return (f"train state per device: params {gib(self.params)}, optimizer {gib(self.optimizer)}, "
                f"EMA and method state {gib(self.other)}: {gib(self.state)}")

    def describe(self, capacity: int | None) -> str:
        of = f" of {gib(capacity)} on the device" if capacity else ""
        text = self.describe_state()
        if not self.activations:
            return text + f"{of} (activations come on top: python -m launch.memory --config ... estimates them)"
        (policy, configured), *others = self.activations.items()
        alternatives = "".join(f"; remat {p}: {gib(b)}" for p, b in others)
        return (text + f"; activations at the configured batch {gib(configured)} (remat {policy}{alternatives}): "
                f"{gib(self.total)}{of}")


def state_memory(abstract_state: Any, activations: dict[str, int] | None = None) -> StateMemory:
    """The per-device bytes of a ``TrainState`` of abstract leaves with shardings
    (``diffusion.train.setup.abstract_state``), with the ``activations`` estimate if given."""
    params, optimizer = shard_bytes(abstract_state.params), shard_bytes(abstract_state.opt_state)
    return StateMemory(params, optimizer, shard_bytes(abstract_state) - params - optimizer, dict(activations or {}))


def device_capacity(device: Any = None) -> int | None:
    """The device's memory in bytes where the backend reports it (GPU, TPU), else None (CPU)."""
    device = device or jax.local_devices()[0]
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001 - backends without memory statistics
        return None
    return int(stats["bytes_limit"]) if stats and "bytes_limit" in stats else None


def check_fits(memory: StateMemory, capacity: int | None) -> None:
    """Raises ``ValueError`` (with the estimate) when the state and the configured
    policy's activations (when estimated) exceed ``capacity``."""
    if capacity is not None and memory.total > capacity:
        raise ValueError(f"this config cannot fit the devices: {memory.describe(capacity)}. Split large parameters "
                         "over more devices (--config.mesh.fsdp), recompute activations (--config.model.remat="
                         "nothing_saveable), use LoRA (--config.train.lora_rank), a smaller batch or a smaller model")
