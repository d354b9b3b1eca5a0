"""Time and label embeddings that accept any leading shape."""

from __future__ import annotations

import math

import flax.linen as nn
import jax.numpy as jnp


def sinusoidal_embedding(t: jnp.ndarray, dim: int, *, scale: float = 1000.0, max_period: float = 10000.0) -> jnp.ndarray:
    """Transformer-style sinusoidal embedding of continuous time.

    Args:
      t: time of any shape ``S`` (``[]``, ``[B]``, ``[B, F]``, ...), in ``[0, 1]``.
      dim: embedding width (even).
      scale: ``t`` is multiplied by it first (1000 matches DDPM's integer steps).
      max_period: lowest frequency's period.

    Returns:
      ``[*S, dim]``: ``[cos(scale t f_k), sin(scale t f_k)]``, ``f_k = max_period^(-k/half)``.
    """
    if dim % 2:
        raise ValueError(f"time embedding width must be even, got {dim}")
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = (scale * jnp.asarray(t, jnp.float32))[..., None] * freqs
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


class TimeEmbedding(nn.Module):
    """Sinusoid of width ``base`` -> Dense(dim) -> SiLU -> Dense(dim), over any leading shape."""

    base: int
    dim: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, t: jnp.ndarray) -> jnp.ndarray:
        h = sinusoidal_embedding(t, self.base).astype(self.dtype)
        h = nn.Dense(self.dim, dtype=self.dtype, name="dense_0")(h)
        return nn.Dense(self.dim, dtype=self.dtype, name="dense_1")(nn.silu(h))


class GuidanceEmbedding(nn.Module):
    """The guidance scale ``w [B]`` -> ``[B, dim]`` for w-conditioned distilled students:
    sinusoid of ``w`` (scale 100, so w in [0, 20] spans the frequencies) -> Dense -> SiLU ->
    Dense, the last **zero-initialised**: a fresh embedding adds nothing, so a student
    built from a teacher starts equal to it for every ``w``."""

    base: int
    dim: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, w: jnp.ndarray) -> jnp.ndarray:
        h = sinusoidal_embedding(w, self.base, scale=100.0).astype(self.dtype)
        h = nn.Dense(self.dim, dtype=self.dtype, name="dense_0")(h)
        return nn.Dense(self.dim, kernel_init=nn.initializers.zeros_init(), dtype=self.dtype,
                        name="dense_1")(nn.silu(h))
