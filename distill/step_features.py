"""A UNet's encoder and decoder features along a sampling trajectory: TiUE's motivation
(docs/results/tiue.md).

The network's top-level blocks, in call order, split into TiUE's halves
(docs/design/tiue.md): the **encoder** is ``conv_in``, the down blocks and the middle
block (everything from ``conv_in`` up to the first up block); the **decoder** is the up
blocks (up to the output norm). Time and label embeddings belong to neither. Names follow
both Kairos UNets (``up_*`` / ``up_blocks_*``, ``norm_out`` / ``conv_norm_out``).
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp

from diffusion.nn.denoiser import network_cond
from sampling.loop import sample_trajectory

_TOP_LEVEL = lambda mdl, method: method == "__call__" and len(mdl.scope.path) == 1  # noqa: E731


def halves(names: list[str]) -> tuple[list[str], list[str]]:
    """``(encoder blocks, decoder blocks)`` from the top-level blocks' names in call order.

    Raises:
      ValueError: no ``conv_in``, up block or output norm: not a Kairos UNet.
    """
    try:
        start = names.index("conv_in")
        first_up = next(i for i, n in enumerate(names) if n.startswith("up_"))
        end = next(i for i, n in enumerate(names) if n.endswith("norm_out"))
    except (ValueError, StopIteration):
        raise ValueError(f"no conv_in, up block or output norm among the network's blocks {names}: "
                         "not a Kairos UNet") from None
    return names[start:first_up], names[first_up:end]


def features_at(denoiser: Any, params: Any, x_t: jax.Array, t: jax.Array,
                cond: Mapping[str, jax.Array] | None = None) -> tuple[dict, dict]:
    """``({encoder block: [B, ...]}, {decoder block: [B, ...]})``: every block's output at ``(x_t, t)``."""
    t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), x_t.shape[:1])
    _, state = denoiser.module.apply({"params": params}, x_t, t, **network_cond(cond),
                                     capture_intermediates=_TOP_LEVEL, mutable=["intermediates"])
    blocks = state["intermediates"]
    enc, dec = halves(list(blocks))
    return {n: blocks[n]["__call__"][0] for n in enc}, {n: blocks[n]["__call__"][0] for n in dec}


def trajectory_features(denoiser: Any, params: Any, solver: Any, grid: jax.Array, x_T: jax.Array,
                        cond: Mapping[str, jax.Array] | None = None) -> tuple[dict, dict]:
    """``({encoder block: [N, B, ...]}, {decoder block: [N, B, ...]})`` at the network's inputs
    ``(x_k, grid[k])``, ``k < N``, along ``solver``'s trajectory from ``x_T`` over ``grid [N + 1]``."""
    states = sample_trajectory(denoiser, params, solver, grid, x_T, cond)
    inputs = jnp.concatenate([x_T[None], states[:-1]])
    at = jax.jit(lambda x, t: features_at(denoiser, params, x, t, cond))
    steps = [at(inputs[k], grid[k]) for k in range(len(grid) - 1)]
    stack = lambda half: {n: jnp.stack([s[half][n] for s in steps]) for n in steps[0][half]}  # noqa: E731
    return stack(0), stack(1)


def consecutive_cosine(features: jax.Array) -> jax.Array:
    """``[N - 1]``: the cosine similarity of each sample's flattened features at steps ``k``
    and ``k + 1`` (``features [N, B, ...]``), averaged over the batch."""
    f = features.reshape(*features.shape[:2], -1).astype(jnp.float32)
    f = f / jnp.maximum(jnp.linalg.norm(f, axis=-1, keepdims=True), 1e-12)
    return jnp.mean(jnp.sum(f[1:] * f[:-1], axis=-1), axis=-1)


def consecutive_relative_change(features: jax.Array) -> jax.Array:
    """``[N - 1]``: ``||f_{k+1} - f_k|| / ||f_k||`` per sample (flattened), averaged over the batch."""
    f = features.reshape(*features.shape[:2], -1).astype(jnp.float32)
    change = jnp.linalg.norm(f[1:] - f[:-1], axis=-1) / jnp.maximum(jnp.linalg.norm(f[:-1], axis=-1), 1e-12)
    return jnp.mean(change, axis=-1)
