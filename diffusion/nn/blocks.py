"""Convolutional UNet blocks: FiLM residual block, down/upsampling."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp


def group_norm(channels: int, name: str, dtype) -> nn.GroupNorm:
    """GroupNorm with 32 groups where the width allows (``gcd(32, channels)``)."""
    return nn.GroupNorm(num_groups=math.gcd(32, channels), dtype=dtype, name=name)


def conv3(features: int, name: str, dtype, zero: bool = False, stride: int = 1) -> nn.Conv:
    init = nn.initializers.zeros_init() if zero else nn.initializers.lecun_normal()
    return nn.Conv(features, (3, 3), strides=(stride, stride), padding="SAME", kernel_init=init, dtype=dtype, name=name)


class ResBlock(nn.Module):
    """``x + conv(drop(act(FiLM(norm(conv(act(norm(x)))), emb))))``, the last conv zero-initialised.

    ``x: [B, H, W, C_in]``, ``emb: [B, D]`` -> ``[B, H, W, out_channels]``.
    FiLM (``scale_shift=True``, ADM): ``norm(h) * (1 + scale) + shift`` with
    ``(scale, shift) = Dense(act(emb))``. ``scale_shift=False`` is DDPM's block:
    ``norm(h + Dense(act(emb)))``.
    """

    out_channels: int
    dropout: float = 0.0
    scale_shift: bool = True
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, emb: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        h = nn.silu(group_norm(x.shape[-1], "norm_0", self.dtype)(x))
        h = conv3(self.out_channels, "conv_0", self.dtype)(h)
        norm = group_norm(self.out_channels, "norm_1", self.dtype)
        if self.scale_shift:
            film = nn.Dense(2 * self.out_channels, dtype=self.dtype, name="film")(nn.silu(emb))
            scale, shift = jnp.split(film[:, None, None, :], 2, axis=-1)
            h = norm(h) * (1.0 + scale) + shift
        else:
            h = norm(h + nn.Dense(self.out_channels, dtype=self.dtype, name="temb")(nn.silu(emb))[:, None, None, :])
        h = nn.Dropout(self.dropout, deterministic=not train)(nn.silu(h))
        h = conv3(self.out_channels, "conv_1", self.dtype, zero=True)(h)
        if x.shape[-1] != self.out_channels:
            x = nn.Dense(self.out_channels, dtype=self.dtype, name="skip")(x)
        return x + h


class Downsample(nn.Module):
    """Stride-2 3x3 convolution: ``[B, H, W, C] -> [B, H/2, W/2, C]``."""

    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        return conv3(x.shape[-1], "conv", self.dtype, stride=2)(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2 then a 3x3 convolution: ``[B, H, W, C] -> [B, 2H, 2W, C]``."""

    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        b, h, w, c = x.shape
        x = jax.image.resize(x, (b, 2 * h, 2 * w, c), method="nearest")
        return conv3(c, "conv", self.dtype)(x)
