"""A UNet's encoder and decoder features along a sampling trajectory: TiUE's motivation
(docs/results/tiue.md). Encoder features are the split's ``EncoderFeatures.h`` (the middle
block's output, docs/design/tiue.md); decoder features are the output of the last
top-level block before the output norm (the last up block)."""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp

from diffusion.nn.denoiser import _network_cond
from sampling.loop import sample_trajectory

_TOP_LEVEL = lambda mdl, method: method == "__call__" and len(mdl.scope.path) == 1  # noqa: E731


def decoder_feature_name(names: list[str]) -> str:
    """The top-level block called just before the output norm (``norm_out`` of the ADM
    UNet, ``conv_norm_out`` of the SD UNet), from the blocks' names in call order."""
    for i, name in enumerate(names):
        if name.endswith("norm_out") and i > 0:
            return names[i - 1]
    raise ValueError(f"no output norm among the network's blocks {names}: not a Kairos UNet")


def features_at(denoiser: Any, params: Any, x_t: jax.Array, t: jax.Array,
                cond: Mapping[str, jax.Array] | None = None) -> tuple[jax.Array, jax.Array]:
    """``(encoder feature [B, h, w, c], decoder feature [B, H, W, c'])`` of the network at ``(x_t [B, ...], t)``."""
    t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), x_t.shape[:1])
    _, state = denoiser.module.apply({"params": params}, x_t, t, **_network_cond(cond),
                                     capture_intermediates=_TOP_LEVEL, mutable=["intermediates"])
    blocks = state["intermediates"]
    decoder = blocks[decoder_feature_name(list(blocks))]["__call__"][0]
    return denoiser.encode(params, x_t, t, cond).h, decoder


def trajectory_features(denoiser: Any, params: Any, solver: Any, grid: jax.Array, x_T: jax.Array,
                        cond: Mapping[str, jax.Array] | None = None) -> tuple[jax.Array, jax.Array]:
    """``(encoder [N, B, ...], decoder [N, B, ...])`` features of the network's inputs
    ``(x_k, grid[k])``, ``k < N``, along ``solver``'s trajectory from ``x_T`` over ``grid [N + 1]``."""
    states = sample_trajectory(denoiser, params, solver, grid, x_T, cond)
    inputs = jnp.concatenate([x_T[None], states[:-1]])
    at = jax.jit(lambda x, t: features_at(denoiser, params, x, t, cond))
    enc, dec = zip(*(at(inputs[k], grid[k]) for k in range(len(grid) - 1)))
    return jnp.stack(enc), jnp.stack(dec)


def consecutive_cosine(features: jax.Array) -> jax.Array:
    """``[N - 1]``: the cosine similarity of each sample's flattened features at steps ``k``
    and ``k + 1`` (``features [N, B, ...]``), averaged over the batch."""
    f = features.reshape(*features.shape[:2], -1).astype(jnp.float32)
    f = f / jnp.maximum(jnp.linalg.norm(f, axis=-1, keepdims=True), 1e-12)
    return jnp.mean(jnp.sum(f[1:] * f[:-1], axis=-1), axis=-1)
