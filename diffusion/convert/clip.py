"""transformers ``CLIPTextModel`` checkpoints -> :class:`diffusion.nn.text.clip.CLIPTextEncoder` params."""

from __future__ import annotations

import pathlib
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from diffusion.convert.tensors import StateDict, check_params, load_state_dict, read_config
from diffusion.nn.text.clip import CLIPTextConfig, CLIPTextEncoder


def convert_clip_text(tensors: Mapping[str, np.ndarray], config: CLIPTextConfig, source: str) -> dict:
    """Flax params from a CLIPTextModel state dict (keys ``text_model.*``; a bare
    ``CLIPTextTransformer``'s keys without the prefix are accepted too). A
    ``CLIPTextModelWithProjection``'s ``text_projection`` is read when the config has a
    ``projection_dim`` (its architectures say so), refused otherwise."""
    prefix = "text_model." if any(k.startswith("text_model.") for k in tensors) else ""
    sd = StateDict(tensors, source)
    p = f"{prefix}embeddings"
    params = {"token_embedding": sd.embedding(f"{p}.token_embedding"),
              "position_embedding": sd.embedding(f"{p}.position_embedding"),
              "final_layer_norm": sd.norm(f"{prefix}final_layer_norm")}
    for i in range(config.num_hidden_layers):
        layer = f"{prefix}encoder.layers.{i}"
        params[f"layers_{i}"] = {
            "self_attn": {name: sd.linear(f"{layer}.self_attn.{name}") for name in ("q_proj", "k_proj", "v_proj", "out_proj")},
            "layer_norm1": sd.norm(f"{layer}.layer_norm1"), "layer_norm2": sd.norm(f"{layer}.layer_norm2"),
            "fc1": sd.linear(f"{layer}.mlp.fc1"), "fc2": sd.linear(f"{layer}.mlp.fc2"),
        }
    if config.projection_dim:
        params["text_projection"] = sd.linear("text_projection", bias=False)
    sd.finish(ignore=("position_ids",))
    expected = jax.eval_shape(lambda: CLIPTextEncoder(config).init(
        jax.random.PRNGKey(0), jnp.zeros((1, config.max_position_embeddings), jnp.int32)))["params"]
    check_params(params, expected, source)
    return params


def load_clip_text(folder: str | pathlib.Path, variant: str | None = None) -> tuple[CLIPTextConfig, dict]:
    """``(config, params)`` of a transformers CLIP text-encoder folder (``config.json`` +
    weights), e.g. a diffusers pipeline's ``text_encoder/``;
    ``variant``: ``fp16`` / ``bf16`` weight files (``diffusion.convert.tensors.weight_files``)."""
    config = read_config(folder, CLIPTextConfig, "transformers CLIPTextModel")
    return config, convert_clip_text(load_state_dict(folder, variant), config, str(folder))
