"""Multi-head self-attention over the pixels of a feature map, with map reuse across sampling steps."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffusion.contract import ATTENTION_MODES
from diffusion.nn.blocks import group_norm


def heads_first(x: jnp.ndarray) -> jnp.ndarray:
    """``[B, L, H, D]`` -> ``[B, H, L, D]``.

    Attention runs heads-first: with the head axis next to the batch axis, XLA:CPU
    keeps ``q k^T``, the softmax and ``A v`` as separate fast kernels; in the
    ``[B, L, H, D]`` layout it fused all three into one kernel 2-4x slower
    (docs/results/attention_fusion.json). The result is the same either way.
    """
    return jnp.swapaxes(x, 1, 2)


def attention_weights(q: jnp.ndarray, k: jnp.ndarray) -> jnp.ndarray:
    """``softmax(q k^T / sqrt(d))``: ``q [B, H, Lq, D]``, ``k [B, H, Lk, D]`` -> ``[B, H, Lq, Lk]``.

    The logits and the softmax are float32 whatever the compute dtype: bf16 logits of
    magnitude 50 are 0.25 apart, which moves the weights by up to 12%.
    """
    logits = jnp.einsum("bhqd,bhkd->bhqk", q, k, preferred_element_type=jnp.float32)
    return jax.nn.softmax(logits / jnp.sqrt(q.shape[-1]).astype(jnp.float32), axis=-1).astype(q.dtype)


MAPS = "attention_maps"  # the variable collection holding cached attention maps


class MultiHeadAttention(nn.Module):
    """Self-attention over the tokens of ``x [B, L, C]`` -> ``[B, L, C]``; cross-attention
    to ``context [B, Lc, Dc]`` when one is given (keys and values from the context).

    The output projection is zero-initialised, so a fresh block is the identity
    inside its residual connection.

    ``attention`` (static, ``diffusion.contract.ATTENTION_MODES``) selects map reuse
    across sampling steps (Hunter et al.): ``"compute"``; ``"store"`` also writes the map
    ``[B, H, L, L]`` to the ``attention_maps`` collection; ``"reuse"`` reads it and
    computes only the values: ``out = A_cached v`` (no query/key projections, no
    ``q k^T``, no softmax). Cross-attention maps are never cached.

    ``qkv_bias=False``: projections without bias (Stable Diffusion's).
    """

    num_heads: int
    dtype: jnp.dtype = jnp.float32
    qkv_bias: bool = True

    @nn.compact
    def __call__(self, x: jnp.ndarray, attention: str = "compute", context: jnp.ndarray | None = None) -> jnp.ndarray:
        if attention not in ATTENTION_MODES:
            raise ValueError(f"unknown attention mode {attention!r}; expected one of {ATTENTION_MODES}")
        if context is not None and attention != "compute":
            raise ValueError("cross-attention maps are not cached: use attention='compute' with a context")
        c = x.shape[-1]
        if c % self.num_heads:
            raise ValueError(f"attention width {c} is not divisible by num_heads={self.num_heads}")
        head = c // self.num_heads
        dense = lambda name: nn.DenseGeneral((self.num_heads, head), use_bias=self.qkv_bias, dtype=self.dtype,  # noqa: E731
                                             name=name)
        source = x if context is None else context.astype(x.dtype)
        v = heads_first(dense("value")(source))
        if attention == "reuse":
            weights = self.get_variable(MAPS, "weights")
            if weights is None:
                raise ValueError("attention='reuse' needs maps from an earlier attention='store' call "
                                 "(pass the attention_maps collection)")
        else:
            weights = attention_weights(heads_first(dense("query")(x)), heads_first(dense("key")(source)))
            if attention == "store":
                self.put_variable(MAPS, "weights", weights)
        out = heads_first(jnp.einsum("bhqk,bhkd->bhqd", weights, v))  # back to [B, Lq, H, D]
        return nn.DenseGeneral(
            c, axis=(-2, -1), kernel_init=nn.initializers.zeros_init(), dtype=self.dtype, name="out"
        )(out)


class AttentionBlock(nn.Module):
    """Residual self-attention over ``H * W`` tokens: ``x: [B, H, W, C]`` -> ``[B, H, W, C]``."""

    num_heads: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, attention: str = "compute") -> jnp.ndarray:
        b, h, w, c = x.shape
        tokens = x.reshape(b, h * w, c)
        normed = group_norm(c, "norm", self.dtype)(x).reshape(b, h * w, c)
        tokens = tokens + MultiHeadAttention(self.num_heads, self.dtype, name="self_attn")(normed, attention)
        return tokens.reshape(b, h, w, c)


class TemporalAttentionBlock(nn.Module):
    """Residual self-attention across frames at each location (factorized space-time):
    ``x: [B * F, H, W, C]`` (frames folded into the batch, sample-major) -> the same shape.

    Tokens are the ``F`` frames of one pixel; a parameter-free sinusoidal frame-position
    embedding is added to the normalised tokens, so attention knows frame order while no
    weight depends on ``F`` (the same weights run on 8 or 16 frames). The output
    projection starts at zero, so a fresh block is the identity. Its maps
    ``[B * H * W, heads, F, F]`` are stored and reused like spatial ones (``attention``).
    """

    num_heads: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, frames: int, attention: str = "compute") -> jnp.ndarray:
        from diffusion.nn.embeddings import sinusoidal_embedding

        bf, h, w, c = x.shape
        b = bf // frames
        tokens = x.reshape(b, frames, h * w, c).transpose(0, 2, 1, 3).reshape(b * h * w, frames, c)
        normed = nn.LayerNorm(dtype=self.dtype, name="norm")(tokens)
        position = sinusoidal_embedding(jnp.arange(frames), c, scale=1.0).astype(normed.dtype)
        tokens = tokens + MultiHeadAttention(self.num_heads, self.dtype, name="temporal_attn")(
            normed + position, attention)
        return tokens.reshape(b, h * w, frames, c).transpose(0, 2, 1, 3).reshape(bf, h, w, c)
