"""InceptionV3 as pytorch-fid 0.3.0 runs it for FID, in Flax, NHWC.

``pytorch_fid.inception.InceptionV3([3])`` with ``use_fid_inception=True``: images
``[N, H, W, 3]`` in ``[0, 1]`` are resized to 299x299 (``F.interpolate(mode='bilinear',
align_corners=False)``, no antialiasing, also when shrinking), mapped to ``2 x - 1``, and
run through TensorFlow's 2015 Inception graph as ported to torchvision modules; the output
is the 2048-d global average pool (``pool3``). What differs from torchvision's Inception3:

- ``Mixed_5b..5d`` (A), ``Mixed_6b..6e`` (C), ``Mixed_7b`` (E_1): the 3x3 stride-1 average
  pool of the pool branch pads by 1 but divides by the number of *real* pixels in the
  window (``count_include_pad=False``, TensorFlow's SAME average pool);
- ``Mixed_7c`` (E_2): that pool is a 3x3 stride-1 *max* pool padded by 1 (with -inf);
- ``Mixed_6a`` (B), ``Mixed_7a`` (D) and the two stem pools: unpadded 3x3 stride-2 max pools.

Each conv is torchvision's ``BasicConv2d``: conv without bias, eval-mode BatchNorm
(eps 0.001, running statistics kept as params: ``scale``, ``bias``, ``mean``, ``var``),
ReLU. Submodule names mirror the torch state dict's (``Mixed_6b/branch7x7_2/conv``), so
``diffusion.convert.inception`` maps one onto the other by name.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

SIZE = 299  # the network's input side
BN_EPS = 1e-3  # torchvision's BasicConv2d
FEATURES = 2048  # pool3


def _taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """torch's linear source taps (``align_corners=False``, no scale factor given):
    ``src = max(n_in / n_out * (i + 0.5) - 0.5, 0)``, ``i0 = floor(src)``, ``i1 = min(i0 + 1, n_in - 1)``,
    weight of ``i1`` = ``src - i0``. Bit for bit as torch's CPU kernel: the scale is a float32
    quotient, ``src`` one fused multiply-add rounded once to float32 (exact in float64, then rounded)."""
    scale = np.float64(np.float32(n_in) / np.float32(n_out))
    src = np.maximum((scale * (np.arange(n_out) + 0.5) - 0.5).astype(np.float32), np.float32(0))
    i0 = np.minimum(np.floor(src).astype(np.int32), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, np.clip(src - i0, 0, 1).astype(np.float32)


def resize_bilinear(x: jnp.ndarray, size: tuple[int, int] = (SIZE, SIZE)) -> jnp.ndarray:
    """``[N, H, W, C] -> [N, size[0], size[1], C]``, equal to torch's ``F.interpolate(x, size,
    mode='bilinear', align_corners=False)`` (half-pixel centres, edge clamp, NO antialiasing
    when downsampling, unlike ``jax.image.resize``). Gathers and lerps, so exact on any backend."""
    for axis, n_out in ((1, size[0]), (2, size[1])):
        n_in = x.shape[axis]
        if n_in == n_out:
            continue  # torch's taps are then the identity
        i0, i1, w = _taps(n_in, n_out)
        shape = [1] * x.ndim
        shape[axis] = n_out
        w = jnp.asarray(w.reshape(shape), x.dtype)
        x = jnp.take(x, i0, axis=axis) * (1 - w) + jnp.take(x, i1, axis=axis) * w
    return x


class FrozenBatchNorm(nn.Module):
    """Eval-mode BatchNorm: ``(x - mean) / sqrt(var + eps) * scale + bias`` over the last axis."""

    eps: float = BN_EPS

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,))
        bias = self.param("bias", nn.initializers.zeros, (c,))
        mean = self.param("mean", nn.initializers.zeros, (c,))
        var = self.param("var", nn.initializers.ones, (c,))
        return (x - mean) * (scale * jax.lax.rsqrt(var + self.eps)) + bias


class BasicConv(nn.Module):
    """torchvision's ``BasicConv2d``: conv (no bias, symmetric zero ``padding`` per spatial axis),
    frozen BatchNorm, ReLU. ``[N, H, W, Cin] -> [N, H', W', features]``."""

    features: int
    kernel: tuple[int, int]
    stride: int = 1
    padding: tuple[int, int] = (0, 0)
    precision: str | None = "highest"

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        x = nn.Conv(self.features, self.kernel, strides=self.stride, padding=[(p, p) for p in self.padding],
                    use_bias=False, precision=self.precision, name="conv")(x)
        return nn.relu(FrozenBatchNorm(name="bn")(x))


def _avg_pool_same(x: jnp.ndarray) -> jnp.ndarray:
    """3x3 stride-1 average pool, padded by 1, averaging real pixels only (count_include_pad=False)."""
    return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_same(x: jnp.ndarray) -> jnp.ndarray:
    """3x3 stride-1 max pool, padded by 1 with -inf (torch's ``F.max_pool2d(x, 3, 1, 1)``)."""
    return nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))


def _max_pool_down(x: jnp.ndarray) -> jnp.ndarray:
    """3x3 stride-2 unpadded max pool: ``H -> (H - 3) // 2 + 1``."""
    return nn.max_pool(x, (3, 3), strides=(2, 2))


class InceptionA(nn.Module):
    """``FIDInceptionA`` (``Mixed_5b..5d``): ``[N, 35, 35, C] -> [N, 35, 35, 224 + pool_features]``."""

    pool_features: int
    precision: str | None = "highest"

    @nn.compact
    def __call__(self, x):
        conv = lambda f, k, p, name: BasicConv(f, k, padding=p, precision=self.precision, name=name)  # noqa: E731
        b1 = conv(64, (1, 1), (0, 0), "branch1x1")(x)
        b5 = conv(48, (1, 1), (0, 0), "branch5x5_1")(x)
        b5 = conv(64, (5, 5), (2, 2), "branch5x5_2")(b5)
        b3 = conv(64, (1, 1), (0, 0), "branch3x3dbl_1")(x)
        b3 = conv(96, (3, 3), (1, 1), "branch3x3dbl_2")(b3)
        b3 = conv(96, (3, 3), (1, 1), "branch3x3dbl_3")(b3)
        bp = conv(self.pool_features, (1, 1), (0, 0), "branch_pool")(_avg_pool_same(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    """torchvision's ``InceptionB`` (``Mixed_6a``): ``[N, 35, 35, 288] -> [N, 17, 17, 768]``."""

    precision: str | None = "highest"

    @nn.compact
    def __call__(self, x):
        b3 = BasicConv(384, (3, 3), stride=2, precision=self.precision, name="branch3x3")(x)
        bd = BasicConv(64, (1, 1), precision=self.precision, name="branch3x3dbl_1")(x)
        bd = BasicConv(96, (3, 3), padding=(1, 1), precision=self.precision, name="branch3x3dbl_2")(bd)
        bd = BasicConv(96, (3, 3), stride=2, precision=self.precision, name="branch3x3dbl_3")(bd)
        return jnp.concatenate([b3, bd, _max_pool_down(x)], axis=-1)


class InceptionC(nn.Module):
    """``FIDInceptionC`` (``Mixed_6b..6e``): ``[N, 17, 17, 768] -> [N, 17, 17, 768]``; factorised 7x7s."""

    channels_7x7: int
    precision: str | None = "highest"

    @nn.compact
    def __call__(self, x):
        c7 = self.channels_7x7
        conv = lambda f, k, p, name: BasicConv(f, k, padding=p, precision=self.precision, name=name)  # noqa: E731
        row, col = ((1, 7), (0, 3)), ((7, 1), (3, 0))  # (kernel, padding)
        b1 = conv(192, (1, 1), (0, 0), "branch1x1")(x)
        b7 = conv(c7, (1, 1), (0, 0), "branch7x7_1")(x)
        b7 = conv(c7, *row, "branch7x7_2")(b7)
        b7 = conv(192, *col, "branch7x7_3")(b7)
        bd = conv(c7, (1, 1), (0, 0), "branch7x7dbl_1")(x)
        bd = conv(c7, *col, "branch7x7dbl_2")(bd)
        bd = conv(c7, *row, "branch7x7dbl_3")(bd)
        bd = conv(c7, *col, "branch7x7dbl_4")(bd)
        bd = conv(192, *row, "branch7x7dbl_5")(bd)
        bp = conv(192, (1, 1), (0, 0), "branch_pool")(_avg_pool_same(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
    """torchvision's ``InceptionD`` (``Mixed_7a``): ``[N, 17, 17, 768] -> [N, 8, 8, 1280]``."""

    precision: str | None = "highest"

    @nn.compact
    def __call__(self, x):
        conv = lambda f, k, p, s, name: BasicConv(f, k, s, p, precision=self.precision, name=name)  # noqa: E731
        b3 = conv(192, (1, 1), (0, 0), 1, "branch3x3_1")(x)
        b3 = conv(320, (3, 3), (0, 0), 2, "branch3x3_2")(b3)
        b7 = conv(192, (1, 1), (0, 0), 1, "branch7x7x3_1")(x)
        b7 = conv(192, (1, 7), (0, 3), 1, "branch7x7x3_2")(b7)
        b7 = conv(192, (7, 1), (3, 0), 1, "branch7x7x3_3")(b7)
        b7 = conv(192, (3, 3), (0, 0), 2, "branch7x7x3_4")(b7)
        return jnp.concatenate([b3, b7, _max_pool_down(x)], axis=-1)


class InceptionE(nn.Module):
    """``FIDInceptionE_1`` (``pool="avg"``, ``Mixed_7b``) / ``FIDInceptionE_2`` (``pool="max"``,
    ``Mixed_7c``): ``[N, 8, 8, C] -> [N, 8, 8, 2048]``."""

    pool: str
    precision: str | None = "highest"

    @nn.compact
    def __call__(self, x):
        conv = lambda f, k, p, name: BasicConv(f, k, padding=p, precision=self.precision, name=name)  # noqa: E731
        b1 = conv(320, (1, 1), (0, 0), "branch1x1")(x)
        b3 = conv(384, (1, 1), (0, 0), "branch3x3_1")(x)
        b3 = jnp.concatenate([conv(384, (1, 3), (0, 1), "branch3x3_2a")(b3),
                              conv(384, (3, 1), (1, 0), "branch3x3_2b")(b3)], axis=-1)
        bd = conv(448, (1, 1), (0, 0), "branch3x3dbl_1")(x)
        bd = conv(384, (3, 3), (1, 1), "branch3x3dbl_2")(bd)
        bd = jnp.concatenate([conv(384, (1, 3), (0, 1), "branch3x3dbl_3a")(bd),
                              conv(384, (3, 1), (1, 0), "branch3x3dbl_3b")(bd)], axis=-1)
        pooled = _avg_pool_same(x) if self.pool == "avg" else _max_pool_same(x)
        bp = conv(192, (1, 1), (0, 0), "branch_pool")(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionV3FID(nn.Module):
    """pytorch-fid's ``InceptionV3([3])`` (FID weights): ``[N, H, W, 3]`` in ``[0, 1]`` -> ``[N, 2048]``.

    Args:
      resize_input: resize to 299x299 first (pytorch-fid's default; off to feed 299x299 images
        already resized with :func:`resize_bilinear`).
      precision: the convolutions' ``jax.lax.Precision`` ("highest": full float32 on GPU/TPU too,
        where the default would round operands to bfloat16/TF32).
    """

    resize_input: bool = True
    precision: str | None = "highest"

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        if self.resize_input:
            x = resize_bilinear(x)
        x = 2 * x - 1
        p = self.precision
        x = BasicConv(32, (3, 3), stride=2, precision=p, name="Conv2d_1a_3x3")(x)
        x = BasicConv(32, (3, 3), precision=p, name="Conv2d_2a_3x3")(x)
        x = BasicConv(64, (3, 3), padding=(1, 1), precision=p, name="Conv2d_2b_3x3")(x)
        x = _max_pool_down(x)
        x = BasicConv(80, (1, 1), precision=p, name="Conv2d_3b_1x1")(x)
        x = BasicConv(192, (3, 3), precision=p, name="Conv2d_4a_3x3")(x)
        x = _max_pool_down(x)
        blocks: Sequence[nn.Module] = (
            InceptionA(32, p, name="Mixed_5b"), InceptionA(64, p, name="Mixed_5c"), InceptionA(64, p, name="Mixed_5d"),
            InceptionB(p, name="Mixed_6a"),
            InceptionC(128, p, name="Mixed_6b"), InceptionC(160, p, name="Mixed_6c"),
            InceptionC(160, p, name="Mixed_6d"), InceptionC(192, p, name="Mixed_6e"),
            InceptionD(p, name="Mixed_7a"),
            InceptionE("avg", p, name="Mixed_7b"), InceptionE("max", p, name="Mixed_7c"))
        for block in blocks:
            x = block(x)
        return x.mean(axis=(1, 2))  # AdaptiveAvgPool2d((1, 1))
