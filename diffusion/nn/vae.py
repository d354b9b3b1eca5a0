"""Stable Diffusion's KL autoencoder (diffusers' ``AutoencoderKL``) in Flax, NHWC.

Encoder: ``conv_in``, down blocks of residual blocks (each but the last ending in a
stride-2 convolution after a (0, 1) pad), a middle block (resnet, single-head
attention, resnet), GroupNorm, SiLU, ``conv_out`` to the posterior's mean and log-variance,
``quant_conv``. Decoder: the mirror image with nearest-neighbour upsampling. Submodule
names mirror diffusers' (``encoder/down_blocks_0/resnets_1/conv1``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

EPS = 1e-6  # every GroupNorm of diffusers' VAE


@dataclasses.dataclass(frozen=True)
class VAEConfig:
    in_channels: int = 3
    out_channels: int = 3
    block_out_channels: Sequence[int] = (128, 256, 512, 512)
    layers_per_block: int = 2
    latent_channels: int = 4
    norm_num_groups: int = 32
    scaling_factor: float = 0.18215
    shift_factor: float = 0.0
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    mid_block_add_attention: bool = True

    @property
    def downscale(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "VAEConfig":
        """From a diffusers ``AutoencoderKL`` ``config.json``. ``force_upcast`` and
        ``sample_size`` are ignored (we compute in float32; sizes are shapes)."""
        for key, allowed in (("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D")):
            bad = [b for b in d.get(key, ()) if b != allowed]
            if bad:
                raise ValueError(f"VAE config: {key} {bad} are not supported (only {allowed})")
        if d.get("act_fn", "silu") != "silu":
            raise ValueError(f"VAE config: act_fn={d['act_fn']!r} is not supported (only 'silu')")
        for key in ("latents_mean", "latents_std"):
            if d.get(key) is not None:
                raise ValueError(f"VAE config: {key} is set; per-channel latent statistics are not supported")
        kwargs = {f.name: d[f.name] for f in dataclasses.fields(cls) if d.get(f.name) is not None}
        if "block_out_channels" in kwargs:
            kwargs["block_out_channels"] = tuple(kwargs["block_out_channels"])
        if len(d.get("down_block_types", kwargs.get("block_out_channels", ()))) != len(
                kwargs.get("block_out_channels", cls.block_out_channels)):
            raise ValueError("VAE config: down_block_types and block_out_channels differ in length")
        return cls(**kwargs)


def _conv(features: int, name: str | None, k: int = 3, stride: int = 1, padding: Any = "SAME") -> nn.Conv:
    """A conv; ``name=None`` inside ``setup`` (there the attribute names it)."""
    return nn.Conv(features, (k, k), strides=(stride, stride), padding=padding if k > 1 else "VALID",
                   **({"name": name} if name else {}))


class ResnetBlock(nn.Module):
    """``x + conv2(silu(norm2(conv1(silu(norm1(x))))))``; a 1x1 ``conv_shortcut`` when the
    width changes. No time embedding."""

    out_channels: int
    groups: int

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        h = nn.silu(nn.GroupNorm(self.groups, epsilon=EPS, name="norm1")(x))
        h = _conv(self.out_channels, "conv1")(h)
        h = nn.silu(nn.GroupNorm(self.groups, epsilon=EPS, name="norm2")(h))
        h = _conv(self.out_channels, "conv2")(h)
        if x.shape[-1] != self.out_channels:
            x = _conv(self.out_channels, "conv_shortcut", k=1)(x)
        return x + h


class VAEAttention(nn.Module):
    """Single-head self-attention over ``H * W`` tokens with a GroupNorm in front and a
    residual connection: ``[B, H, W, C] -> [B, H, W, C]``."""

    groups: int

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        b, h, w, c = x.shape
        t = nn.GroupNorm(self.groups, epsilon=EPS, name="group_norm")(x).reshape(b, h * w, c)
        q, k, v = (nn.Dense(c, name=n)(t) for n in ("to_q", "to_k", "to_v"))
        weights = jax.nn.softmax((jnp.einsum("bqc,bkc->bqk", q, k) * c**-0.5).astype(jnp.float32), axis=-1)
        out = nn.Dense(c, name="to_out_0")(jnp.einsum("bqk,bkc->bqc", weights.astype(v.dtype), v))
        return x + out.reshape(b, h, w, c)


class MidBlock(nn.Module):
    groups: int
    attention: bool = True

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        c = x.shape[-1]
        x = ResnetBlock(c, self.groups, name="resnets_0")(x)
        if self.attention:
            x = VAEAttention(self.groups, name="attentions_0")(x)
        return ResnetBlock(c, self.groups, name="resnets_1")(x)


class Encoder(nn.Module):
    config: VAEConfig

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        c = self.config
        h = _conv(c.block_out_channels[0], "conv_in")(x)
        for i, width in enumerate(c.block_out_channels):
            for j in range(c.layers_per_block):
                h = ResnetBlock(width, c.norm_num_groups, name=f"down_blocks_{i}_resnets_{j}")(h)
            if i != len(c.block_out_channels) - 1:
                h = jnp.pad(h, ((0, 0), (0, 1), (0, 1), (0, 0)))
                h = _conv(width, f"down_blocks_{i}_downsamplers_0_conv", stride=2, padding="VALID")(h)
        h = MidBlock(c.norm_num_groups, c.mid_block_add_attention, name="mid_block")(h)
        h = nn.silu(nn.GroupNorm(c.norm_num_groups, epsilon=EPS, name="conv_norm_out")(h))
        return _conv(2 * c.latent_channels, "conv_out")(h)


class Decoder(nn.Module):
    config: VAEConfig

    @nn.compact
    def __call__(self, z: jnp.ndarray) -> jnp.ndarray:
        c = self.config
        widths = list(reversed(c.block_out_channels))
        h = _conv(widths[0], "conv_in")(z)
        h = MidBlock(c.norm_num_groups, c.mid_block_add_attention, name="mid_block")(h)
        for i, width in enumerate(widths):
            for j in range(c.layers_per_block + 1):
                h = ResnetBlock(width, c.norm_num_groups, name=f"up_blocks_{i}_resnets_{j}")(h)
            if i != len(widths) - 1:
                b, hh, ww, ch = h.shape
                h = jax.image.resize(h, (b, 2 * hh, 2 * ww, ch), method="nearest")
                h = _conv(width, f"up_blocks_{i}_upsamplers_0_conv")(h)
        h = nn.silu(nn.GroupNorm(c.norm_num_groups, epsilon=EPS, name="conv_norm_out")(h))
        return _conv(c.out_channels, "conv_out")(h)


class AutoencoderKL(nn.Module):
    """``encode(x [B, H, W, C] in [-1, 1]) -> (mean, logvar)`` ``[B, H/f, W/f, latent]``
    (``f = 2^(levels - 1)``), ``decode(z) -> [B, H, W, out_channels]``."""

    config: VAEConfig

    def setup(self):
        c = self.config
        self.encoder, self.decoder = Encoder(c), Decoder(c)
        self.quant_conv = _conv(2 * c.latent_channels, None, k=1) if c.use_quant_conv else None
        self.post_quant_conv = _conv(c.latent_channels, None, k=1) if c.use_post_quant_conv else None

    def encode(self, x: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
        f = self.config.downscale
        if x.shape[1] % f or x.shape[2] % f:
            raise ValueError(f"VAE input {x.shape[1]}x{x.shape[2]} is not divisible by its downscale factor {f}")
        moments = self.encoder(x)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        mean, logvar = jnp.split(moments, 2, axis=-1)
        return mean, jnp.clip(logvar, -30.0, 20.0)

    def decode(self, z: jnp.ndarray) -> jnp.ndarray:
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        return self.decode(self.encode(x)[0])


def latent_moments(vae: AutoencoderKL, params: Any, x: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """``(mean, std)`` of the diffusion-space posterior of images ``x [B, H, W, C]`` in
    ``[-1, 1]``: ``((posterior mean - shift_factor) * scaling_factor, posterior std *
    scaling_factor)``, each ``[B, h, w, c]``; ``mean + std * eps`` is diffusers'
    ``latent_dist.sample()`` in diffusion space."""
    mean, logvar = vae.apply({"params": params}, x, method=AutoencoderKL.encode)
    scale = vae.config.scaling_factor
    return (mean - vae.config.shift_factor) * scale, jnp.exp(0.5 * logvar) * scale


def latents_from_images(vae: AutoencoderKL, params: Any, x: jnp.ndarray, rng: jax.Array | None = None) -> jnp.ndarray:
    """Diffusion-space latents of images ``x [B, H, W, C]`` in ``[-1, 1]``: the posterior
    mean, or a posterior sample when ``rng`` is given (:func:`latent_moments`)."""
    mean, std = latent_moments(vae, params, x)
    return mean if rng is None else mean + std * jax.random.normal(rng, mean.shape, mean.dtype)


def images_from_latents(vae: AutoencoderKL, params: Any, z: jnp.ndarray) -> jnp.ndarray:
    """Images ``[B, H, W, C]`` (about ``[-1, 1]``) of diffusion-space latents."""
    z = z / vae.config.scaling_factor + vae.config.shift_factor
    return vae.apply({"params": params}, z, method=AutoencoderKL.decode)
