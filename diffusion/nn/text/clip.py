"""The CLIP text transformer of Stable Diffusion 1.x / 2.x (transformers' CLIPTextModel) in Flax.

Pre-LayerNorm transformer layers with causal self-attention and an MLP (``quick_gelu`` in
SD 1.x's OpenAI CLIP, exact ``gelu`` in SD 2.x's OpenCLIP), then a final LayerNorm.
Submodule names mirror transformers' (``layers_0/self_attn/q_proj``), so a converted
checkpoint's keys read the same.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

ACTIVATIONS = {"quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x), "gelu": lambda x: jax.nn.gelu(x, approximate=False)}


@dataclasses.dataclass(frozen=True)
class CLIPTextConfig:
    vocab_size: int = 49408
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    eos_token_id: int = 2
    projection_dim: int = 0  # > 0: a CLIPTextModelWithProjection's text_projection (SDXL's second encoder)

    def __post_init__(self):
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"CLIP text config: hidden_act={self.hidden_act!r} is not supported; "
                             f"expected one of {sorted(ACTIVATIONS)}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"CLIP text config: hidden_size={self.hidden_size} is not divisible by "
                             f"num_attention_heads={self.num_attention_heads}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "CLIPTextConfig":
        """From a transformers ``config.json`` (a ``CLIPTextConfig``, or a ``CLIPConfig``'s
        ``text_config``); fields we do not use are ignored. A field the file leaves out takes
        transformers' default (``TRANSFORMERS_DEFAULTS``), as ``from_pretrained`` would: older
        transformers wrote only the fields that differ from its defaults."""
        d = {**TRANSFORMERS_DEFAULTS, **dict(d.get("text_config") or d)}
        projected = "CLIPTextModelWithProjection" in (d.get("architectures") or ())
        fields = {f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d and f.name != "projection_dim"}
        return cls(**fields, projection_dim=int(d["projection_dim"]) if projected else 0)


# transformers' CLIPTextConfig() (5.23.0), for fields a config.json leaves out
TRANSFORMERS_DEFAULTS = {"vocab_size": 49408, "hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 12,
                         "num_attention_heads": 8, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
                         "layer_norm_eps": 1e-5, "eos_token_id": 49407, "projection_dim": 512}


class CLIPAttention(nn.Module):
    """Causal multi-head self-attention: ``x [B, L, D] -> [B, L, D]``."""

    heads: int

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        b, n, d = x.shape
        head = d // self.heads
        split = lambda y: y.reshape(b, n, self.heads, head).transpose(0, 2, 1, 3)  # noqa: E731  [B, H, L, d]
        q = split(nn.Dense(d, name="q_proj")(x) * head**-0.5)
        k, v = split(nn.Dense(d, name="k_proj")(x)), split(nn.Dense(d, name="v_proj")(x))
        logits = jnp.einsum("bhqd,bhkd->bhqk", q, k)
        causal = jnp.tril(jnp.ones((n, n), bool))
        weights = jax.nn.softmax(jnp.where(causal, logits.astype(jnp.float32), -jnp.inf), axis=-1)
        out = jnp.einsum("bhqk,bhkd->bhqd", weights.astype(v.dtype), v).transpose(0, 2, 1, 3).reshape(b, n, d)
        return nn.Dense(d, name="out_proj")(out)


class CLIPLayer(nn.Module):
    config: CLIPTextConfig

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        c = self.config
        ln = lambda name: nn.LayerNorm(epsilon=c.layer_norm_eps, name=name)  # noqa: E731
        x = x + CLIPAttention(c.num_attention_heads, name="self_attn")(ln("layer_norm1")(x))
        h = nn.Dense(c.intermediate_size, name="fc1")(ln("layer_norm2")(x))
        return x + nn.Dense(c.hidden_size, name="fc2")(ACTIVATIONS[c.hidden_act](h))


class CLIPTextEncoder(nn.Module):
    """``ids [B, L] int -> (hidden [B, L, D], pooled [B, D])``, ``L <= max_position_embeddings``.

    ``skip`` ("clip skip", as diffusers' pipelines): the hidden states ``skip`` layers
    before the last, through the final LayerNorm. ``pooled`` is the final hidden state at
    the end-of-text token (transformers' rule: the largest id when ``eos_token_id == 2``,
    the first ``eos_token_id`` otherwise), through ``text_projection`` when the config has one.
    ``raw_skip`` (SDXL's pipeline: ``hidden_states[-(skip + 2)]`` with ``skip + 1`` here): the
    hidden states ``raw_skip`` layers before the last *without* the final LayerNorm, while
    ``pooled`` still comes from the full depth.
    """

    config: CLIPTextConfig

    @nn.compact
    def __call__(self, ids: jnp.ndarray, skip: int = 0, raw_skip: int = 0) -> tuple[jnp.ndarray, jnp.ndarray]:
        c = self.config
        if raw_skip and skip:
            raise ValueError("give clip skip or raw_skip (SDXL's penultimate states), not both")
        if not 0 <= raw_skip < c.num_hidden_layers:
            raise ValueError(f"raw_skip must be in [0, {c.num_hidden_layers - 1}], got {raw_skip}")
        if ids.shape[-1] > c.max_position_embeddings:
            raise ValueError(f"{ids.shape[-1]} tokens, but this CLIP text model has {c.max_position_embeddings} "
                             "positions: tokenize with truncation to that length")
        if not 0 <= skip < c.num_hidden_layers:
            raise ValueError(f"clip skip must be in [0, {c.num_hidden_layers - 1}], got {skip}")
        x = nn.Embed(c.vocab_size, c.hidden_size, name="token_embedding")(ids)
        x = x + nn.Embed(c.max_position_embeddings, c.hidden_size, name="position_embedding")(
            jnp.arange(ids.shape[-1]))[None]
        depth = c.num_hidden_layers if raw_skip else c.num_hidden_layers - skip
        raw = x
        for i in range(depth):
            x = CLIPLayer(c, name=f"layers_{i}")(x)
            if i == c.num_hidden_layers - 1 - raw_skip:
                raw = x
        if skip and self.is_initializing():  # the skipped layers get parameters (one checkpoint for every skip)
            for i in range(c.num_hidden_layers - skip, c.num_hidden_layers):
                CLIPLayer(c, name=f"layers_{i}")(x)
        hidden = nn.LayerNorm(epsilon=c.layer_norm_eps, name="final_layer_norm")(x)
        eos = jnp.argmax(ids, -1) if c.eos_token_id == 2 else jnp.argmax(ids == c.eos_token_id, -1)
        pooled = hidden[jnp.arange(ids.shape[0]), eos]
        if c.projection_dim:
            pooled = nn.Dense(c.projection_dim, use_bias=False, name="text_projection")(pooled)
        return (raw if raw_skip else hidden), pooled
