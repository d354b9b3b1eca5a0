"""transformers ``BertModel`` checkpoints -> :class:`diffusion.nn.text.bert.BertEncoder` params.

The pooler (``pooler.dense``) is not part of :class:`BertEncoder` (sentence encoders
mean-pool the hidden states instead), so its tensors are accepted and ignored.
"""

from __future__ import annotations

import pathlib
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from diffusion.convert.tensors import StateDict, check_params, load_state_dict, read_config
from diffusion.nn.text.bert import BertConfig, BertEncoder


def convert_bert(tensors: Mapping[str, np.ndarray], config: BertConfig, source: str) -> dict:
    """Flax params from a BertModel state dict (optionally prefixed ``bert.``)."""
    prefix = "bert." if any(k.startswith("bert.") for k in tensors) else ""
    sd = StateDict(tensors, source)
    e = f"{prefix}embeddings"
    params = {name: sd.embedding(f"{e}.{name}")
              for name in ("word_embeddings", "position_embeddings", "token_type_embeddings")}
    params["embeddings_LayerNorm"] = sd.norm(f"{e}.LayerNorm")
    for i in range(config.num_hidden_layers):
        layer = f"{prefix}encoder.layer.{i}"
        params[f"layer_{i}"] = {
            **{f"attention_self_{w}": sd.linear(f"{layer}.attention.self.{w}") for w in ("query", "key", "value")},
            "attention_output_dense": sd.linear(f"{layer}.attention.output.dense"),
            "attention_output_LayerNorm": sd.norm(f"{layer}.attention.output.LayerNorm"),
            "intermediate_dense": sd.linear(f"{layer}.intermediate.dense"),
            "output_dense": sd.linear(f"{layer}.output.dense"),
            "output_LayerNorm": sd.norm(f"{layer}.output.LayerNorm"),
        }
    sd.finish(ignore=("position_ids", "pooler."))
    ids = jnp.zeros((1, 4), jnp.int32)
    expected = jax.eval_shape(lambda: BertEncoder(config).init(jax.random.PRNGKey(0), ids, ids))["params"]
    check_params(params, expected, source)
    return params


def load_bert(folder: str | pathlib.Path) -> tuple[BertConfig, dict]:
    """``(config, params)`` of a transformers BERT folder (``config.json`` + weights), e.g.
    the all-MiniLM-L6-v2 folder."""
    config = read_config(folder, BertConfig, "transformers BertModel")
    return config, convert_bert(load_state_dict(folder), config, str(folder))
