"""Multi-head self-attention (and optional cross-attention) over the pixels of a feature map."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffusion.nn.blocks import group_norm


def attention_weights(q: jnp.ndarray, k: jnp.ndarray) -> jnp.ndarray:
    """``softmax(q k^T / sqrt(d))``: ``q [B, Lq, H, D]``, ``k [B, Lk, H, D]`` -> ``[B, H, Lq, Lk]``.

    The softmax runs in float32 whatever the compute dtype.
    """
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(q.shape[-1]).astype(q.dtype)
    return jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(q.dtype)


class MultiHeadAttention(nn.Module):
    """Queries from ``x [B, L, C]``, keys/values from ``context [B, Lc, Dc]`` (``x`` if None).

    The output projection is zero-initialised, so a fresh block is the identity
    inside its residual connection.
    """

    num_heads: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, context: jnp.ndarray | None = None) -> jnp.ndarray:
        c = x.shape[-1]
        if c % self.num_heads:
            raise ValueError(f"attention width {c} is not divisible by num_heads={self.num_heads}")
        head = c // self.num_heads
        dense = lambda name: nn.DenseGeneral((self.num_heads, head), dtype=self.dtype, name=name)  # noqa: E731
        kv_in = x if context is None else context.astype(self.dtype)
        q, k, v = dense("query")(x), dense("key")(kv_in), dense("value")(kv_in)
        weights = attention_weights(q, k)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v)
        return nn.DenseGeneral(
            c, axis=(-2, -1), kernel_init=nn.initializers.zeros_init(), dtype=self.dtype, name="out"
        )(out)


class AttentionBlock(nn.Module):
    """Residual self-attention over ``H * W`` tokens, then cross-attention to ``context``.

    ``x: [B, H, W, C]``, ``context: [B, L, D]`` or None -> ``[B, H, W, C]``.
    """

    num_heads: int
    use_context: bool = False
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, context: jnp.ndarray | None = None) -> jnp.ndarray:
        b, h, w, c = x.shape
        tokens = x.reshape(b, h * w, c)
        normed = group_norm(c, "norm", self.dtype)(x).reshape(b, h * w, c)
        tokens = tokens + MultiHeadAttention(self.num_heads, self.dtype, name="self_attn")(normed)
        if self.use_context:
            if context is None:
                raise ValueError("this UNet was built with cross-attention: pass cond['context'] of shape [B, L, D]")
            normed = nn.LayerNorm(dtype=self.dtype, name="norm_context")(tokens)
            tokens = tokens + MultiHeadAttention(self.num_heads, self.dtype, name="cross_attn")(normed, context)
        return tokens.reshape(b, h, w, c)
