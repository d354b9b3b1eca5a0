"""Multi-head self-attention (and optional cross-attention) over the pixels of a feature map."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

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

    The softmax runs in float32 whatever the compute dtype.
    """
    logits = jnp.einsum("bhqd,bhkd->bhqk", q, k) / jnp.sqrt(q.shape[-1]).astype(q.dtype)
    return jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(q.dtype)


ATTENTION_MODES = ("compute", "store", "reuse")
MAPS = "attention_maps"  # the variable collection holding cached attention maps


class MultiHeadAttention(nn.Module):
    """Queries from ``x [B, L, C]``, keys/values from ``context [B, Lc, Dc]`` (``x`` if None).

    The output projection is zero-initialised, so a fresh block is the identity
    inside its residual connection.

    ``attention`` (static) selects map reuse across sampling steps (Hunter et al.):
    ``"compute"``; ``"store"`` also writes the map ``[B, H, Lq, Lk]`` to the
    ``attention_maps`` collection; ``"reuse"`` reads it and computes only the values:
    ``out = A_cached v`` (no query/key projections, no ``q k^T``, no softmax).
    """

    num_heads: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, context: jnp.ndarray | None = None,
                 attention: str = "compute") -> jnp.ndarray:
        if attention not in ATTENTION_MODES:
            raise ValueError(f"unknown attention mode {attention!r}; expected one of {ATTENTION_MODES}")
        c = x.shape[-1]
        if c % self.num_heads:
            raise ValueError(f"attention width {c} is not divisible by num_heads={self.num_heads}")
        head = c // self.num_heads
        dense = lambda name: nn.DenseGeneral((self.num_heads, head), dtype=self.dtype, name=name)  # noqa: E731
        kv_in = x if context is None else context.astype(self.dtype)
        v = heads_first(dense("value")(kv_in))
        if attention == "reuse":
            weights = self.get_variable(MAPS, "weights")
            if weights is None:
                raise ValueError("attention='reuse' needs maps from an earlier attention='store' call "
                                 "(pass the attention_maps collection)")
        else:
            weights = attention_weights(heads_first(dense("query")(x)), heads_first(dense("key")(kv_in)))
            if attention == "store":
                self.put_variable(MAPS, "weights", weights)
        out = heads_first(jnp.einsum("bhqk,bhkd->bhqd", weights, v))  # back to [B, Lq, H, D]
        return nn.DenseGeneral(
            c, axis=(-2, -1), kernel_init=nn.initializers.zeros_init(), dtype=self.dtype, name="out"
        )(out)


class AttentionBlock(nn.Module):
    """Residual self-attention over ``H * W`` tokens, then cross-attention to ``context``.

    ``x: [B, H, W, C]``, ``context: [B, L, D]`` or None -> ``[B, H, W, C]``.
    ``attention`` applies to the self-attention maps only; cross-attention maps
    (``L x L_ctx``, cheap) are always recomputed.
    """

    num_heads: int
    use_context: bool = False
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, context: jnp.ndarray | None = None,
                 attention: str = "compute") -> jnp.ndarray:
        b, h, w, c = x.shape
        tokens = x.reshape(b, h * w, c)
        normed = group_norm(c, "norm", self.dtype)(x).reshape(b, h * w, c)
        tokens = tokens + MultiHeadAttention(self.num_heads, self.dtype, name="self_attn")(normed, attention=attention)
        if self.use_context:
            if context is None:
                raise ValueError("this UNet was built with cross-attention: pass cond['context'] of shape [B, L, D]")
            normed = nn.LayerNorm(dtype=self.dtype, name="norm_context")(tokens)
            tokens = tokens + MultiHeadAttention(self.num_heads, self.dtype, name="cross_attn")(normed, context)
        return tokens.reshape(b, h, w, c)
