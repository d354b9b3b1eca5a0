"""CLIP's vision tower (transformers' ``CLIPVisionModelWithProjection``, ``CLIPModel.get_image_features``) in Flax.

A ViT: a stride-``patch`` convolution (no bias) cuts the image into patches, a learned class
token goes in front, learned position embeddings are added, then ``pre_layrnorm``
(transformers' spelling), pre-LayerNorm encoder layers with full (non-causal) self-attention
through the shared :class:`diffusion.nn.attention.MultiHeadAttention` and the text tower's
MLP activations, ``post_layernorm`` of the class token, and ``visual_projection`` (no bias).
Submodule names follow transformers' (``layers_0/fc1``, ``post_layernorm``), except the
attention's projections, which carry the shared module's names (``query``, ``key``,
``value``, ``out``; ``diffusion.convert.clip_vision`` splits transformers' ``q_proj`` into heads).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax.numpy as jnp

from diffusion.nn.attention import MultiHeadAttention
from diffusion.nn.text.clip import ACTIVATIONS


@dataclasses.dataclass(frozen=True)
class CLIPVisionConfig:
    """transformers' ``CLIPVisionConfig`` fields we use, with its defaults (ViT-B/32)."""

    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_channels: int = 3
    image_size: int = 224
    patch_size: int = 32
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    projection_dim: int = 512  # 0: no visual_projection (a bare CLIPVisionModel: the pooled class token)

    def __post_init__(self):
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"CLIP vision config: hidden_act={self.hidden_act!r} is not supported; "
                             f"expected one of {sorted(ACTIVATIONS)}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"CLIP vision config: hidden_size={self.hidden_size} is not divisible by "
                             f"num_attention_heads={self.num_attention_heads}")
        if self.image_size % self.patch_size:
            raise ValueError(f"CLIP vision config: image_size={self.image_size} is not a multiple of "
                             f"patch_size={self.patch_size}")

    @property
    def num_positions(self) -> int:
        return (self.image_size // self.patch_size) ** 2 + 1

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "CLIPVisionConfig":
        """From a transformers ``config.json``: a ``CLIPConfig`` (its ``vision_config``, and the
        top-level ``projection_dim`` that ``CLIPModel.visual_projection`` uses) or a
        ``CLIPVisionConfig`` (``projection_dim`` its own; 0 when its architectures say
        ``CLIPVisionModel``, which has no projection). Missing fields take transformers' defaults."""
        if d.get("vision_config") is not None:
            sub = dict(d["vision_config"])
            projection = int(d.get("projection_dim", 512))
        else:
            sub = dict(d)
            bare = "CLIPVisionModel" in (d.get("architectures") or ())
            projection = 0 if bare else int(d.get("projection_dim", 512))
        fields = {f.name: sub[f.name] for f in dataclasses.fields(cls) if f.name in sub and f.name != "projection_dim"}
        return cls(**fields, projection_dim=projection)


class CLIPVisionLayer(nn.Module):
    """Pre-LayerNorm encoder layer: ``x [N, L, D] -> [N, L, D]``."""

    config: CLIPVisionConfig

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        c = self.config
        ln = lambda name: nn.LayerNorm(epsilon=c.layer_norm_eps, name=name)  # noqa: E731
        x = x + MultiHeadAttention(c.num_attention_heads, zero_out=False, name="self_attn")(ln("layer_norm1")(x))
        h = nn.Dense(c.intermediate_size, name="fc1")(ln("layer_norm2")(x))
        return x + nn.Dense(c.hidden_size, name="fc2")(ACTIVATIONS[c.hidden_act](h))


class CLIPVisionEncoder(nn.Module):
    """``pixels [N, S, S, C]`` (NHWC, already normalized as the image processor does;
    ``S = image_size``) -> image embeddings ``[N, projection_dim]`` (``[N, hidden_size]``
    without a projection): the ``post_layernorm`` class token through ``visual_projection``."""

    config: CLIPVisionConfig

    @nn.compact
    def __call__(self, pixels: jnp.ndarray) -> jnp.ndarray:
        c = self.config
        if pixels.ndim != 4 or pixels.shape[1:] != (c.image_size, c.image_size, c.num_channels):
            raise ValueError(f"CLIP vision tower takes pixels [N, {c.image_size}, {c.image_size}, {c.num_channels}] "
                             f"(NHWC), got {pixels.shape}")
        n, p = pixels.shape[0], c.patch_size
        patches = nn.Conv(c.hidden_size, (p, p), strides=(p, p), padding="VALID", use_bias=False,
                          name="patch_embedding")(pixels)  # [N, S/p, S/p, D]
        patches = patches.reshape(n, -1, c.hidden_size)  # row-major over the grid, as torch's flatten(2)
        cls = self.param("class_embedding", nn.initializers.normal(1.0), (c.hidden_size,), patches.dtype)
        x = jnp.concatenate([jnp.broadcast_to(cls, (n, 1, c.hidden_size)), patches], axis=1)
        x = x + nn.Embed(c.num_positions, c.hidden_size, name="position_embedding")(jnp.arange(c.num_positions))[None]
        x = nn.LayerNorm(epsilon=c.layer_norm_eps, name="pre_layrnorm")(x)
        for i in range(c.num_hidden_layers):
            x = CLIPVisionLayer(c, name=f"layers_{i}")(x)
        pooled = nn.LayerNorm(epsilon=c.layer_norm_eps, name="post_layernorm")(x[:, 0])
        if c.projection_dim:
            pooled = nn.Dense(c.projection_dim, use_bias=False, name="visual_projection")(pooled)
        return pooled
