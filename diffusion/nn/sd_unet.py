"""Stable Diffusion's UNet (diffusers' ``UNet2DConditionModel``, SD 1.x / 2.x shapes) in Flax.

Like :class:`diffusion.nn.unet.UNet`, the architecture is two static lists walked by
``__call__``: ``conv_in`` and every down-block resnet (+ cross-attention transformer) and
downsampler leave one skip; every up-block resnet consumes one, last first. That walk
is what feature caching needs (``Modes.features`` / ``feature_branch`` count skips the
same way), and every self-attention map is a :class:`MultiHeadAttention` map that
``Modes.attention`` may store or reuse (docs/design/caching.md). Submodule names mirror
diffusers' (``down_blocks_1_attentions_0/transformer_blocks_0/attn2``).

Time: our discrete ``t = n / T`` is diffusers' timestep ``k = n - 1`` (its
``alphas_cumprod[k]`` is our ``alpha_bar(t)``), so the network embeds ``t * T - 1``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax.numpy as jnp

from diffusion.contract import COMPUTE, Modes
from diffusion.nn import remat
from diffusion.nn.deep_feature import hand_over
from diffusion.nn.split import EncoderFeatures, check_part
from diffusion.nn.transformer2d import Transformer2D

# options of diffusers' UNet2DConditionModel that change the network, with the value we implement
_DEFAULTS = {
    "act_fn": "silu", "center_input_sample": False, "class_embed_type": None,
    "encoder_hid_dim": None, "time_cond_proj_dim": None, "only_cross_attention": False,
    "dual_cross_attention": False, "resnet_time_scale_shift": "default", "time_embedding_type": "positional",
    "mid_block_type": "UNetMidBlock2DCrossAttn", "conv_in_kernel": 3, "conv_out_kernel": 3,
    "num_class_embeds": None, "attention_type": "default", "resnet_skip_time_act": False,
    "resnet_out_scale_factor": 1.0, "time_embedding_dim": None, "timestep_post_act": None,
    "cross_attention_norm": None, "mid_block_only_cross_attention": None, "class_embeddings_concat": False,
    "reverse_transformer_layers_per_block": None, "time_embedding_act_fn": None, "mid_block_scale_factor": 1,
}
_PAIRS = {"CrossAttnDownBlock2D": "CrossAttnUpBlock2D", "DownBlock2D": "UpBlock2D"}


def _per_block(value, n: int, name: str) -> tuple[int, ...]:
    values = tuple(value) if isinstance(value, (list, tuple)) else (value,) * n
    if len(values) != n:
        raise ValueError(f"SD UNet config: {name} has {len(values)} entries for {n} blocks")
    return tuple(int(v) for v in values)


@dataclasses.dataclass(frozen=True)
class SDUNetConfig:
    """The fields of a diffusers ``unet/config.json`` that shape the network.

    ``num_heads`` and ``transformer_layers`` are per down block (the up path uses them
    reversed, the middle block the last). ``use_linear_projection`` (SD 2.x) changes only
    the stored layout of ``proj_in`` / ``proj_out``, not the function.
    ``addition_time_embed_dim > 0``: SDXL's ``text_time`` added embedding, the pooled text
    embedding ``[B, P]`` and the sinusoids of six size / crop numbers ``[B, 6]`` through an MLP
    (``add_embedding``, input ``projection_class_embeddings_input_dim = P + 6 x that dim``),
    added to the time embedding.
    """

    in_channels: int = 4
    out_channels: int = 4
    down_block_types: Sequence[str] = ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
    block_out_channels: Sequence[int] = (320, 640, 1280, 1280)
    layers_per_block: int = 2
    cross_attention_dim: int = 768
    num_heads: Sequence[int] = (8, 8, 8, 8)
    transformer_layers: Sequence[int] = (1, 1, 1, 1)
    use_linear_projection: bool = False
    flip_sin_to_cos: bool = True
    freq_shift: float = 0.0
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    sample_size: int = 64
    addition_time_embed_dim: int = 0
    projection_class_embeddings_input_dim: int = 0

    @property
    def pooled_dim(self) -> int:
        """``P``, the pooled text embedding's width of a ``text_time`` UNet (0: none)."""
        return self.projection_class_embeddings_input_dim - 6 * self.addition_time_embed_dim

    def __post_init__(self):
        n = len(self.block_out_channels)
        if len(self.down_block_types) != n:
            raise ValueError(f"SD UNet config: {len(self.down_block_types)} down_block_types for {n} block_out_channels")
        bad = [b for b in self.down_block_types if b not in _PAIRS]
        if bad:
            raise ValueError(f"SD UNet config: down block types {bad} are not supported; expected {sorted(_PAIRS)}")
        if self.addition_time_embed_dim and self.pooled_dim <= 0:
            raise ValueError(f"SD UNet config: projection_class_embeddings_input_dim="
                             f"{self.projection_class_embeddings_input_dim} leaves no room for a pooled text embedding "
                             f"beside 6 x addition_time_embed_dim={self.addition_time_embed_dim}")
        for w, h in zip(self.block_out_channels, self.num_heads):
            if w % h:
                raise ValueError(f"SD UNet config: block width {w} is not divisible by its {h} attention heads")

    @property
    def up_block_types(self) -> tuple[str, ...]:
        return tuple(_PAIRS[b] for b in reversed(self.down_block_types))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SDUNetConfig":
        """From a diffusers ``unet/config.json``; an option that changes the network to
        something we do not implement is an error naming it."""
        for key, default in _DEFAULTS.items():
            if d.get(key, default) != default:
                raise ValueError(f"SD UNet config: {key}={d[key]!r} is not supported (only {default!r})")
        added = d.get("addition_embed_type")
        if added not in (None, "text_time"):
            raise ValueError(f"SD UNet config: addition_embed_type={added!r} is not supported (only None or "
                             "'text_time', SDXL's)")
        down = tuple(d.get("down_block_types", cls.down_block_types))
        n = len(down)
        up = tuple(d.get("up_block_types", ()))
        if up and up != tuple(_PAIRS.get(b, "?") for b in reversed(down)):
            raise ValueError(f"SD UNet config: up_block_types {list(up)} do not mirror down_block_types {list(down)}")
        # diffusers' naming quirk: for SD, attention_head_dim is the number of heads
        heads = d.get("num_attention_heads") or d.get("attention_head_dim", 8)
        return cls(
            in_channels=d.get("in_channels", 4), out_channels=d.get("out_channels", 4), down_block_types=down,
            block_out_channels=tuple(d.get("block_out_channels", cls.block_out_channels)),
            layers_per_block=d.get("layers_per_block", 2), cross_attention_dim=d.get("cross_attention_dim", 768),
            num_heads=_per_block(heads, n, "num_attention_heads"),
            transformer_layers=_per_block(d.get("transformer_layers_per_block", 1), n, "transformer_layers_per_block"),
            use_linear_projection=bool(d.get("use_linear_projection", False)),
            flip_sin_to_cos=bool(d.get("flip_sin_to_cos", True)), freq_shift=float(d.get("freq_shift", 0)),
            norm_num_groups=d.get("norm_num_groups", 32), norm_eps=float(d.get("norm_eps", 1e-5)),
            sample_size=d.get("sample_size", 64),
            addition_time_embed_dim=int(d.get("addition_time_embed_dim") or 0) if added else 0,
            projection_class_embeddings_input_dim=int(d.get("projection_class_embeddings_input_dim") or 0)
            if added else 0)


def diffusers_timestep(t: jnp.ndarray, num_train_timesteps: int) -> jnp.ndarray:
    """diffusers' timestep ``k = t T - 1`` of our time ``t [B]``. A lattice time ``n / T``
    is not exact in float32 (``0.502 * 1000 = 501.99997``): values within 1e-3 of an
    integer are snapped to it, so an imported network sees exactly its training integers;
    times between lattice points (a time shift) stay continuous."""
    k = t * num_train_timesteps - 1.0
    return jnp.where(jnp.abs(k - jnp.round(k)) < 1e-3, jnp.round(k), k)


def timestep_embedding(k: jnp.ndarray, dim: int, flip_sin_to_cos: bool, freq_shift: float) -> jnp.ndarray:
    """diffusers' ``get_timestep_embedding``: ``[B] -> [B, dim]``."""
    half = dim // 2
    freqs = jnp.exp(-math.log(10000.0) * jnp.arange(half, dtype=jnp.float32) / (half - freq_shift))
    args = k.astype(jnp.float32)[:, None] * freqs[None]
    sin, cos = jnp.sin(args), jnp.cos(args)
    return jnp.concatenate([cos, sin] if flip_sin_to_cos else [sin, cos], axis=-1)


class SDResnet(nn.Module):
    """diffusers' ``ResnetBlock2D``: ``x [B, H, W, Cin], temb [B, D] -> [B, H, W, out]``;
    ``dropout`` (training only) before ``conv2``, where diffusers puts it."""

    out_channels: int
    groups: int
    eps: float
    dtype: jnp.dtype = jnp.float32
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x: jnp.ndarray, temb: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        norm = lambda name: nn.GroupNorm(self.groups, epsilon=self.eps, dtype=self.dtype, name=name)  # noqa: E731
        conv = lambda name, k=3: nn.Conv(self.out_channels, (k, k), padding="SAME", dtype=self.dtype, name=name)  # noqa: E731
        h = conv("conv1")(nn.silu(norm("norm1")(x)))
        h = h + nn.Dense(self.out_channels, dtype=self.dtype, name="time_emb_proj")(nn.silu(temb))[:, None, None, :]
        h = nn.Dropout(self.dropout, deterministic=not train)(nn.silu(norm("norm2")(h)))
        h = conv("conv2")(h)
        if x.shape[-1] != self.out_channels:
            x = conv("conv_shortcut", 1)(x)
        return x + h


class SDUNet(nn.Module):
    """``x [B, H, W, C]``, ``t [B]`` in ``[0, 1]``, ``context [B, L, cross_attention_dim]``
    -> ``[B, H, W, out_channels]`` in float32.

    ``modes`` (static) as in :class:`diffusion.nn.unet.UNet`: ``modes.attention`` for every
    self-attention map (cross-attention is always computed); ``modes.features`` for the
    deep feature entering the shallow decoder path of skip branch ``modes.feature_branch``.
    """

    config: SDUNetConfig
    num_train_timesteps: int = 1000
    dtype: jnp.dtype = jnp.float32
    remat: str = "off"  # the blocks' rematerialisation policy in training (diffusion.nn.remat)
    dropout: float = 0.0  # in every resnet, training only (config.model.dropout)

    def down_blocks(self) -> list[tuple[str, int | None, int, int]]:
        """After ``conv_in``, in order: ``(name, width, heads, layers)`` of each resnet
        (``heads = 0``: no transformer after it), ``(name, None, 0, 0)`` of each downsampler."""
        c, out = self.config, []
        for i, (width, kind) in enumerate(zip(c.block_out_channels, c.down_block_types)):
            heads = c.num_heads[i] if kind.startswith("CrossAttn") else 0
            out += [(f"down_blocks_{i}_{{}}_{j}", width, heads, c.transformer_layers[i]) for j in range(c.layers_per_block)]
            if i != len(c.block_out_channels) - 1:
                out.append((f"down_blocks_{i}_downsamplers_0_conv", None, 0, 0))
        return out

    def up_blocks(self) -> list[tuple[str, int, int, int, str | None]]:
        """In order: ``(name, width, heads, layers, upsampler name or None)`` of each resnet."""
        c, out = self.config, []
        n = len(c.block_out_channels)
        for u in range(n):
            level = n - 1 - u
            heads = c.num_heads[level] if c.down_block_types[level].startswith("CrossAttn") else 0
            for j in range(c.layers_per_block + 1):
                up = f"up_blocks_{u}_upsamplers_0_conv" if j == c.layers_per_block and u != n - 1 else None
                out.append((f"up_blocks_{u}_{{}}_{j}", c.block_out_channels[level], heads, c.transformer_layers[level], up))
        return out

    @property
    def num_branches(self) -> int:
        return 1 + len(self.down_blocks())

    def encode(self, x: jnp.ndarray, t: jnp.ndarray, context: jnp.ndarray | None = None,
               guidance: jnp.ndarray | None = None, train: bool = False, modes: Modes = COMPUTE) -> EncoderFeatures:
        """TiUE's encoder (``conv_in``, down blocks, middle block; docs/design/tiue.md)."""
        return self(x, t, context, guidance, train, modes, part="encode")

    def decode(self, features: EncoderFeatures, t: jnp.ndarray, context: jnp.ndarray | None = None,
               guidance: jnp.ndarray | None = None, train: bool = False, modes: Modes = COMPUTE) -> jnp.ndarray:
        """TiUE's decoder (up blocks, output layers) with the time embedding of ``t [B]``."""
        return self(None, t, context, guidance, train, modes, part="decode", features=features)

    @nn.compact
    def __call__(self, x: jnp.ndarray | None, t: jnp.ndarray, context: jnp.ndarray | None = None,
                 guidance: jnp.ndarray | None = None, train: bool = False, modes: Modes = COMPUTE,
                 part: str = "all", features: EncoderFeatures | None = None, text_embeds: jnp.ndarray | None = None,
                 time_ids: jnp.ndarray | None = None) -> jnp.ndarray:
        """``text_embeds [B, P]`` and ``time_ids [B, 6]``: a ``text_time`` (SDXL) UNet's added
        conditions (the pooled text embedding; original size, crop corner, target size)."""
        c = self.config
        check_part(part, modes, features, temporal=False)
        self._check(x, context, guidance, modes)
        self._check_added(text_embeds, time_ids)
        b = features.batch if part == "decode" else x.shape[0]
        k = diffusers_timestep(jnp.broadcast_to(jnp.asarray(t, jnp.float32), (b,)), self.num_train_timesteps)
        temb = timestep_embedding(k, c.block_out_channels[0], c.flip_sin_to_cos, c.freq_shift).astype(self.dtype)
        temb = nn.Dense(4 * c.block_out_channels[0], dtype=self.dtype, name="time_embedding_linear_1")(temb)
        temb = nn.Dense(4 * c.block_out_channels[0], dtype=self.dtype, name="time_embedding_linear_2")(nn.silu(temb))
        if c.addition_time_embed_dim:
            ids = jnp.broadcast_to(jnp.asarray(time_ids, jnp.float32), (b, 6)).reshape(-1)
            sizes = timestep_embedding(ids, c.addition_time_embed_dim, c.flip_sin_to_cos, c.freq_shift).reshape(b, -1)
            added = jnp.concatenate([jnp.asarray(text_embeds, jnp.float32), sizes], axis=-1).astype(self.dtype)
            added = nn.Dense(4 * c.block_out_channels[0], dtype=self.dtype, name="add_embedding_linear_1")(added)
            temb = temb + nn.Dense(4 * c.block_out_channels[0], dtype=self.dtype,
                                   name="add_embedding_linear_2")(nn.silu(added))
        context = context.astype(self.dtype)
        conv = lambda width, name, stride=1: nn.Conv(width, (3, 3), strides=(stride, stride), padding=((1, 1), (1, 1)),  # noqa: E731
                                                     dtype=self.dtype, name=name)

        resnet = remat.block(SDResnet, self.remat, train, static_argnums=(3,))
        transformer = remat.block(Transformer2D, self.remat, train, static_argnums=(3,))

        def res_attn(h, name, width, heads, layers):
            h = resnet(width, c.norm_num_groups, c.norm_eps, self.dtype, self.dropout, name=name.format("resnets"))(
                h, temb, train)
            if heads:
                h = transformer(heads, c.norm_num_groups, layers, self.dtype, name=name.format("attentions"))(
                    h, context, modes.attention)
            return h

        retrieve = modes.features == "retrieve"
        if part == "decode":
            skips, h = list(features.skips), features.h
        else:
            h = conv(c.block_out_channels[0], "conv_in")(x.astype(self.dtype))
            skips = [h]
            down = self.down_blocks()
            for name, width, heads, layers in (down[:modes.feature_branch] if retrieve else down):
                h = res_attn(h, name, width, heads, layers) if width else conv(h.shape[-1], name, stride=2)(h)
                skips.append(h)

        if not retrieve and part != "decode":  # the middle block
            width = h.shape[-1]
            h = resnet(width, c.norm_num_groups, c.norm_eps, self.dtype, self.dropout, name="mid_block_resnets_0")(
                h, temb, train)
            h = transformer(c.num_heads[-1], c.norm_num_groups, c.transformer_layers[-1], self.dtype,
                            name="mid_block_attentions_0")(h, context, modes.attention)
            h = resnet(width, c.norm_num_groups, c.norm_eps, self.dtype, self.dropout, name="mid_block_resnets_1")(
                h, temb, train)
        if part == "encode":
            return EncoderFeatures(tuple(skips), h)

        first_shallow = self.num_branches - 1 - modes.feature_branch
        for j, (name, width, heads, layers, upsample) in enumerate(self.up_blocks()):
            if j < first_shallow and retrieve:
                continue
            if j == first_shallow:
                h = hand_over(self, h, modes.features)
            h = res_attn(jnp.concatenate([h, skips.pop()], axis=-1), name, width, heads, layers)
            if upsample:
                bb, hh, ww, cc = h.shape
                h = conv(cc, upsample)(jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2))

        h = nn.silu(nn.GroupNorm(c.norm_num_groups, epsilon=c.norm_eps, dtype=self.dtype, name="conv_norm_out")(h))
        return conv(c.out_channels, "conv_out")(h).astype(jnp.float32)

    def _check_added(self, text_embeds, time_ids) -> None:
        c = self.config
        if not c.addition_time_embed_dim:
            if text_embeds is not None or time_ids is not None:
                raise ValueError("this SD UNet takes no text_embeds / time_ids (they are SDXL's added conditions)")
            return
        if text_embeds is None or text_embeds.ndim != 2 or text_embeds.shape[-1] != c.pooled_dim:
            got = None if text_embeds is None else text_embeds.shape
            raise ValueError(f"this SDXL-style UNet needs cond['text_embeds'] of shape [B, {c.pooled_dim}] (the pooled "
                             f"text embedding), got {got}")
        if time_ids is None or time_ids.shape[-1] != 6:
            got = None if time_ids is None else time_ids.shape
            raise ValueError(f"this SDXL-style UNet needs cond['time_ids'] of shape [B, 6] (original size, crop "
                             f"corner, target size), got {got}")

    def _check(self, x, context, guidance, modes: Modes) -> None:
        levels = len(self.config.block_out_channels) - 1
        if x is not None and (x.shape[1] % 2**levels or x.shape[2] % 2**levels):
            raise ValueError(f"latent size {x.shape[1]}x{x.shape[2]} is not divisible by 2^{levels}")
        if context is None or context.ndim != 3 or context.shape[-1] != self.config.cross_attention_dim:
            got = None if context is None else context.shape
            raise ValueError(f"the SD UNet needs cond['context'] of shape [B, L, {self.config.cross_attention_dim}] "
                             f"(text-encoder hidden states), got {got}")
        if guidance is not None:
            raise ValueError("this SD UNet takes no guidance input (it is not a w-conditioned student)")
        if not modes.feature_branch < self.num_branches:
            raise ValueError(f"feature_branch must be in [0, {self.num_branches - 1}] for this UNet, "
                             f"got {modes.feature_branch}")
