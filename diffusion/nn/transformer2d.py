"""diffusers' ``Transformer2DModel`` (continuous input) in Flax: the cross-attention block
of Stable Diffusion's UNet.

``x + proj_out(blocks(proj_in(GroupNorm(x))))`` over the ``H * W`` tokens, each block
``BasicTransformerBlock``: pre-LayerNorm self-attention (``attn1``, whose map
``diffusion.contract.Modes.attention`` may store or reuse), cross-attention to the text
context (``attn2``) and a GEGLU feed-forward. ``proj_in`` / ``proj_out`` are token-wise
dense layers: SD 1.x's 1x1 convolutions and SD 2.x's linear projections are the same map.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffusion.nn.attention import MultiHeadAttention


class GEGLUFeedForward(nn.Module):
    """``net_2(h * gelu(gate))`` with ``(h, gate) = split(net_0_proj(x))``, inner width ``4 C``."""

    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        c = x.shape[-1]
        h, gate = jnp.split(nn.Dense(8 * c, dtype=self.dtype, name="net_0_proj")(x), 2, axis=-1)
        return nn.Dense(c, dtype=self.dtype, name="net_2")(h * jax.nn.gelu(gate, approximate=False))


class BasicTransformerBlock(nn.Module):
    """``[B, L, C]`` tokens, ``context [B, Lc, Dc]`` -> ``[B, L, C]``."""

    num_heads: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, context: jnp.ndarray, attention: str = "compute") -> jnp.ndarray:
        ln = lambda name: nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name=name)  # noqa: E731
        attn = lambda name: MultiHeadAttention(self.num_heads, self.dtype, qkv_bias=False, name=name)  # noqa: E731
        x = x + attn("attn1")(ln("norm1")(x), attention)
        x = x + attn("attn2")(ln("norm2")(x), "compute", context)
        return x + GEGLUFeedForward(self.dtype, name="ff")(ln("norm3")(x))


class Transformer2D(nn.Module):
    """``x [B, H, W, C]``, ``context [B, Lc, Dc]`` -> ``[B, H, W, C]``."""

    num_heads: int
    groups: int
    num_layers: int = 1
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, context: jnp.ndarray, attention: str = "compute") -> jnp.ndarray:
        b, h, w, c = x.shape
        t = nn.GroupNorm(self.groups, epsilon=1e-6, dtype=self.dtype, name="norm")(x).reshape(b, h * w, c)
        t = nn.Dense(c, dtype=self.dtype, name="proj_in")(t)
        for i in range(self.num_layers):
            t = BasicTransformerBlock(self.num_heads, self.dtype, name=f"transformer_blocks_{i}")(t, context, attention)
        return x + nn.Dense(c, dtype=self.dtype, name="proj_out")(t).reshape(b, h, w, c)
