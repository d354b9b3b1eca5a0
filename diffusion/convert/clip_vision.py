"""transformers CLIP checkpoints -> Flax params: the vision tower
(:class:`diffusion.nn.clip_vision.CLIPVisionEncoder`) and a whole ``CLIPModel`` (both towers,
the text side through :func:`diffusion.convert.clip.convert_clip_text`). Numbers are only
moved (transposed, reshaped), never computed, so ``diffusion.convert.invert`` inverts them.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from diffusion.convert.clip import convert_clip_text
from diffusion.convert.tensors import ConversionError, StateDict, check_params
from diffusion.nn.clip_vision import CLIPVisionConfig, CLIPVisionEncoder
from diffusion.nn.text.clip import CLIPTextConfig

# transformers' CLIPTextConfig defaults (what it reads for a field a config.json leaves out);
# diffusion.nn.text.clip.CLIPTextConfig defaults to SD 1.x's encoder instead.
TEXT_DEFAULTS = {"vocab_size": 49408, "hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 12,
                 "num_attention_heads": 8, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
                 "layer_norm_eps": 1e-5, "eos_token_id": 49407}


@dataclasses.dataclass(frozen=True)
class CLIPModelConfig:
    """A transformers ``CLIPConfig``: the two towers, both projecting to ``projection_dim``."""

    vision: CLIPVisionConfig
    text: CLIPTextConfig

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "CLIPModelConfig":
        if not isinstance(d.get("vision_config"), Mapping) or not isinstance(d.get("text_config"), Mapping):
            raise ValueError(f"not a CLIPModel config (no vision_config and text_config; model_type "
                             f"{d.get('model_type')!r})")
        projection = int(d.get("projection_dim", 512))
        text = CLIPTextConfig.from_dict({**TEXT_DEFAULTS, **d["text_config"]})
        return cls(vision=CLIPVisionConfig.from_dict(d), text=dataclasses.replace(text, projection_dim=projection))


def _heads(linear: dict, heads: int, out: bool = False) -> dict:
    """A Dense ``kernel [in, out]`` (+ ``bias``) -> DenseGeneral's per-head layout:
    ``[D, H, d]`` (``bias [H, d]``) for q/k/v, ``[H, d, D]`` for the output projection."""
    k = linear["kernel"]
    if out:
        return {"kernel": k.reshape(heads, k.shape[0] // heads, k.shape[1]), "bias": linear["bias"]}
    return {"kernel": k.reshape(k.shape[0], heads, k.shape[1] // heads),
            "bias": linear["bias"].reshape(heads, -1)}


def convert_clip_vision(tensors: Mapping[str, np.ndarray], config: CLIPVisionConfig, source: str) -> dict:
    """Flax params from a vision state dict: a ``CLIPModel``'s ``vision_model.*`` and
    ``visual_projection.weight`` (a ``CLIPVisionModelWithProjection``'s are the same names; a bare
    ``CLIPVisionTransformer``'s keys without the prefix are accepted too).

    Raises:
      ConversionError: a missing, unused or mis-shaped tensor (named).
    """
    prefix = "vision_model." if any(k.startswith("vision_model.") for k in tensors) else ""
    sd = StateDict(tensors, source)
    e, heads = f"{prefix}embeddings", config.num_attention_heads
    params = {"patch_embedding": {"kernel": sd.take(f"{e}.patch_embedding.weight", 4).transpose(2, 3, 1, 0)},
              "class_embedding": sd.take(f"{e}.class_embedding", 1),
              "position_embedding": sd.embedding(f"{e}.position_embedding"),
              "pre_layrnorm": sd.norm(f"{prefix}pre_layrnorm"), "post_layernorm": sd.norm(f"{prefix}post_layernorm")}
    for i in range(config.num_hidden_layers):
        layer = f"{prefix}encoder.layers.{i}"
        attn = {name: _heads(sd.linear(f"{layer}.self_attn.{torch_name}"), heads, out=name == "out")
                for name, torch_name in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj"),
                                         ("out", "out_proj"))}
        params[f"layers_{i}"] = {"self_attn": attn, "layer_norm1": sd.norm(f"{layer}.layer_norm1"),
                                 "layer_norm2": sd.norm(f"{layer}.layer_norm2"),
                                 "fc1": sd.linear(f"{layer}.mlp.fc1"), "fc2": sd.linear(f"{layer}.mlp.fc2")}
    if config.projection_dim:
        params["visual_projection"] = sd.linear("visual_projection", bias=False)
    sd.finish(ignore=("position_ids",))
    size = config.image_size
    expected = jax.eval_shape(lambda: CLIPVisionEncoder(config).init(
        jax.random.PRNGKey(0), jnp.zeros((1, size, size, config.num_channels))))["params"]
    check_params(params, expected, source)
    return params


def _is_text(key: str) -> bool:
    return key.startswith("text_model.") or key.startswith("text_projection.")


def convert_clip_model(tensors: Mapping[str, np.ndarray], config: CLIPModelConfig, source: str) -> dict:
    """``{"vision": ..., "text": ...}`` Flax params of a transformers ``CLIPModel`` state dict:
    ``text_model.*`` and ``text_projection.weight`` go to :func:`convert_clip_text` (its config
    carries the projection), everything else but ``logit_scale`` (unused by embeddings) to
    :func:`convert_clip_vision`, which names any tensor it has no place for.

    Raises:
      ConversionError: a missing, unused or mis-shaped tensor (named).
    """
    if not any(_is_text(k) for k in tensors):
        raise ConversionError(f"{source}: no text_model.* tensors: not a CLIPModel checkpoint (a vision-only model "
                              "cannot score prompts)")
    text = {k: v for k, v in tensors.items() if _is_text(k)}
    vision = {k: v for k, v in tensors.items() if not _is_text(k) and k != "logit_scale"}
    return {"vision": convert_clip_vision(vision, config.vision, source),
            "text": convert_clip_text(text, config.text, source)}
