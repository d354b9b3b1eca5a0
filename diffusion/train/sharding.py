"""Mesh with named axes (``data``, ``fsdp``), sharding rules, and global batches.

Parameters and optimizer state: a leaf with at least ``min_fsdp_size`` elements is
split along its largest axis divisible by the ``fsdp`` axis size; everything else is
replicated. The batch is split along its first axis over both axes. No ``pmap``.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

AXES = ("data", "fsdp")
BATCH_AXES = ("data", "fsdp")


def make_mesh(data: int = -1, fsdp: int = 1, devices=None) -> Mesh:
    """A 2-D device mesh ``(data, fsdp)``; ``-1`` takes the remaining devices.

    Axes are ``Auto`` (jax 0.10 defaults to ``Explicit``, which rejects the classic
    sharding constraints).
    """
    devices = jax.devices() if devices is None else devices
    n = len(devices)
    if data == -1 and fsdp == -1:
        raise ValueError("at most one of mesh.data / mesh.fsdp may be -1")
    if data == -1:
        data = n // fsdp if fsdp > 0 and n % fsdp == 0 else 0
    if fsdp == -1:
        fsdp = n // data if data > 0 and n % data == 0 else 0
    if data * fsdp != n or data < 1 or fsdp < 1:
        raise ValueError(f"mesh data={data} x fsdp={fsdp} does not use the {n} available devices; "
                         f"set config.mesh.data / config.mesh.fsdp so that their product is {n} (-1 = the rest)")
    return jax.make_mesh((data, fsdp), AXES, axis_types=(AxisType.Auto, AxisType.Auto), devices=devices)


def leaf_spec(shape: tuple[int, ...], fsdp_size: int, min_fsdp_size: int = 2**14) -> P:
    """The partition spec of one parameter / optimizer leaf (see module docstring)."""
    if fsdp_size <= 1 or int(np.prod(shape, dtype=np.int64)) < min_fsdp_size:
        return P()
    for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
        if shape[axis] % fsdp_size == 0:
            spec = [None] * len(shape)
            spec[axis] = "fsdp"
            return P(*spec)
    return P()


def state_shardings(abstract_state: Any, mesh: Mesh, min_fsdp_size: int = 2**14) -> Any:
    """Shardings for a tree of ``ShapeDtypeStruct`` (e.g. from ``jax.eval_shape``)."""
    fsdp = mesh.shape["fsdp"]
    return jax.tree.map(lambda x: NamedSharding(mesh, leaf_spec(tuple(x.shape), fsdp, min_fsdp_size)), abstract_state)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over ``data`` and ``fsdp``."""
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def global_batch(local_batch: Any, mesh: Mesh) -> Any:
    """Assembles each process's ``[B_local, ...]`` arrays into global ``[B, ...]`` arrays.

    ``B = B_local * process_count``; the global batch must split evenly over the mesh.
    """
    sharding = batch_sharding(mesh)
    n = mesh.devices.size

    def make(x):
        x = np.asarray(x)
        if (x.shape[0] * jax.process_count()) % n:
            raise ValueError(f"global batch {x.shape[0] * jax.process_count()} is not divisible by the "
                             f"{n} devices of the mesh; choose train.batch_size as a multiple of {n}")
        return jax.make_array_from_process_local_data(sharding, x)

    return jax.tree.map(make, local_batch)


def place_whole(tree: Any, sharding: NamedSharding) -> Any:
    """Puts values every process holds whole (host arrays, or arrays on a process's own
    device) onto ``sharding``: each process fills its own devices' pieces, so it works with
    one process or many (unlike ``jax.device_put`` of a one-device array onto a mesh that
    spans processes)."""
    def place(a):
        a = np.asarray(a)
        return jax.make_array_from_callback(a.shape, sharding, lambda index: a[index])

    return jax.tree.map(place, tree)
