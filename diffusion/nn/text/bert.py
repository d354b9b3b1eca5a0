"""A BERT encoder (transformers' BertModel without its pooler) in Flax, for sentence
encoders such as all-MiniLM-L6-v2.

Post-LayerNorm layers: self-attention over the unpadded tokens, then a GELU (exact erf)
feed-forward, each followed by ``LayerNorm(out + residual)``. Submodule names mirror
transformers' (``layer_0/attention/self/query``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class BertConfig:
    vocab_size: int = 30522
    hidden_size: int = 384
    intermediate_size: int = 1536
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-12
    position_embedding_type: str = "absolute"

    def __post_init__(self):
        if self.hidden_act != "gelu":
            raise ValueError(f"BERT config: hidden_act={self.hidden_act!r} is not supported (only 'gelu')")
        if self.position_embedding_type != "absolute":
            raise ValueError(f"BERT config: position_embedding_type={self.position_embedding_type!r} is not "
                             "supported (only 'absolute')")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"BERT config: hidden_size={self.hidden_size} is not divisible by "
                             f"num_attention_heads={self.num_attention_heads}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "BertConfig":
        """From a transformers ``config.json``; fields we do not use (dropout, ...) are ignored."""
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})


class BertLayer(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, x: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
        c = self.config
        b, n, d = x.shape
        heads, head = c.num_attention_heads, d // c.num_attention_heads
        ln = lambda name: nn.LayerNorm(epsilon=c.layer_norm_eps, name=name)  # noqa: E731
        split = lambda y: y.reshape(b, n, heads, head).transpose(0, 2, 1, 3)  # noqa: E731
        q, k, v = (split(nn.Dense(d, name=f"attention_self_{w}")(x)) for w in ("query", "key", "value"))
        logits = jnp.einsum("bhqd,bhkd->bhqk", q, k) * head**-0.5
        logits = jnp.where(mask[:, None, None, :] > 0, logits.astype(jnp.float32), jnp.finfo(jnp.float32).min)
        ctx = jnp.einsum("bhqk,bhkd->bhqd", jax.nn.softmax(logits, -1).astype(v.dtype), v)
        ctx = ctx.transpose(0, 2, 1, 3).reshape(b, n, d)
        x = ln("attention_output_LayerNorm")(nn.Dense(d, name="attention_output_dense")(ctx) + x)
        h = jax.nn.gelu(nn.Dense(c.intermediate_size, name="intermediate_dense")(x), approximate=False)
        return ln("output_LayerNorm")(nn.Dense(d, name="output_dense")(h) + x)


class BertEncoder(nn.Module):
    """``ids [B, L], mask [B, L] (1 = token, 0 = padding) -> hidden [B, L, D]`` (the last
    layer, transformers' ``last_hidden_state``)."""

    config: BertConfig

    @nn.compact
    def __call__(self, ids: jnp.ndarray, mask: jnp.ndarray, token_type_ids: jnp.ndarray | None = None) -> jnp.ndarray:
        c = self.config
        if ids.shape[-1] > c.max_position_embeddings:
            raise ValueError(f"{ids.shape[-1]} tokens, but this BERT has {c.max_position_embeddings} positions")
        types = jnp.zeros_like(ids) if token_type_ids is None else token_type_ids
        x = (nn.Embed(c.vocab_size, c.hidden_size, name="word_embeddings")(ids)
             + nn.Embed(c.max_position_embeddings, c.hidden_size, name="position_embeddings")(jnp.arange(ids.shape[-1]))
             + nn.Embed(c.type_vocab_size, c.hidden_size, name="token_type_embeddings")(types))
        x = nn.LayerNorm(epsilon=c.layer_norm_eps, name="embeddings_LayerNorm")(x)
        for i in range(c.num_hidden_layers):
            x = BertLayer(c, name=f"layer_{i}")(x, mask)
        return x


def mean_pool(hidden: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
    """Sentence-transformers' mean pooling: ``[B, L, D], [B, L] -> [B, D]``, the mean over
    the unpadded tokens."""
    m = mask.astype(hidden.dtype)[..., None]
    return (hidden * m).sum(1) / jnp.maximum(m.sum(1), 1e-9)
