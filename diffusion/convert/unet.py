"""diffusers ``UNet2DConditionModel`` checkpoints -> :class:`diffusion.nn.sd_unet.SDUNet` params."""

from __future__ import annotations

import pathlib
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from diffusion.convert.tensors import StateDict, check_params, load_state_dict, read_config
from diffusion.nn.sd_unet import SDUNet, SDUNetConfig


def _attention(sd: StateDict, p: str, heads: int) -> dict:
    """``to_q/to_k/to_v`` ``[H*D, Cin]`` -> DenseGeneral ``[Cin, H, D]``; ``to_out.0``
    ``[C, H*D]`` -> ``[H, D, C]`` (and its bias)."""
    out = {}
    for ours, theirs in (("query", "to_q"), ("key", "to_k"), ("value", "to_v")):
        w = sd.take(f"{p}.{theirs}.weight", 2)
        out[ours] = {"kernel": w.T.reshape(w.shape[1], heads, w.shape[0] // heads)}
    proj = sd.linear(f"{p}.to_out.0")
    out["out"] = {"kernel": proj["kernel"].reshape(heads, -1, proj["kernel"].shape[-1]), "bias": proj["bias"]}
    return out


def _transformer(sd: StateDict, p: str, heads: int, layers: int) -> dict:
    out = {"norm": sd.norm(f"{p}.norm"), "proj_in": sd.linear(f"{p}.proj_in"), "proj_out": sd.linear(f"{p}.proj_out")}
    for i in range(layers):
        b = f"{p}.transformer_blocks.{i}"
        out[f"transformer_blocks_{i}"] = {
            **{n: sd.norm(f"{b}.{n}") for n in ("norm1", "norm2", "norm3")},
            "attn1": _attention(sd, f"{b}.attn1", heads), "attn2": _attention(sd, f"{b}.attn2", heads),
            "ff": {"net_0_proj": sd.linear(f"{b}.ff.net.0.proj"), "net_2": sd.linear(f"{b}.ff.net.2")},
        }
    return out


def _resnet(sd: StateDict, p: str) -> dict:
    out = {"norm1": sd.norm(f"{p}.norm1"), "norm2": sd.norm(f"{p}.norm2"), "conv1": sd.conv(f"{p}.conv1"),
           "conv2": sd.conv(f"{p}.conv2"), "time_emb_proj": sd.linear(f"{p}.time_emb_proj")}
    if sd.has(f"{p}.conv_shortcut.weight"):
        out["conv_shortcut"] = sd.conv(f"{p}.conv_shortcut")
    return out


def _dotted(name: str, kind: str) -> str:
    """``down_blocks_1_{}_0`` -> ``down_blocks.1.<kind>.0`` (diffusers' key of that block)."""
    return name.format(kind).replace("_blocks_", "_blocks.").replace(f"_{kind}_", f".{kind}.").replace(
        "_downsamplers_0_conv", ".downsamplers.0.conv").replace("_upsamplers_0_conv", ".upsamplers.0.conv")


def convert_unet(tensors: Mapping[str, np.ndarray], config: SDUNetConfig, source: str) -> dict:
    """Flax params from a UNet2DConditionModel state dict."""
    sd = StateDict(tensors, source)
    unet = SDUNet(config)
    params = {"conv_in": sd.conv("conv_in"), "conv_out": sd.conv("conv_out"), "conv_norm_out": sd.norm("conv_norm_out"),
              "time_embedding_linear_1": sd.linear("time_embedding.linear_1"),
              "time_embedding_linear_2": sd.linear("time_embedding.linear_2"),
              **({"add_embedding_linear_1": sd.linear("add_embedding.linear_1"),
                  "add_embedding_linear_2": sd.linear("add_embedding.linear_2")} if config.addition_time_embed_dim else {}),
              "mid_block_resnets_0": _resnet(sd, "mid_block.resnets.0"),
              "mid_block_resnets_1": _resnet(sd, "mid_block.resnets.1"),
              "mid_block_attentions_0": _transformer(sd, "mid_block.attentions.0", config.num_heads[-1],
                                                     config.transformer_layers[-1])}
    blocks = [(n, w, h, k) for n, w, h, k in unet.down_blocks()] + [(n, w, h, k) for n, w, h, k, _ in unet.up_blocks()]
    for name, width, heads, layers in blocks:
        if width is None:  # a downsampler
            params[name] = sd.conv(_dotted(name, ""))
            continue
        params[name.format("resnets")] = _resnet(sd, _dotted(name, "resnets"))
        if heads:
            params[name.format("attentions")] = _transformer(sd, _dotted(name, "attentions"), heads, layers)
    for *_, upsample in unet.up_blocks():
        if upsample:
            params[upsample] = sd.conv(_dotted(upsample, ""))
    sd.finish()
    x = jnp.zeros((1, 2 ** (len(config.block_out_channels) - 1), 2 ** (len(config.block_out_channels) - 1),
                   config.in_channels))
    added = {"text_embeds": jnp.zeros((1, config.pooled_dim)), "time_ids": jnp.zeros((1, 6))} if (
        config.addition_time_embed_dim) else {}
    expected = jax.eval_shape(lambda: unet.init(jax.random.PRNGKey(0), x, jnp.zeros((1,)),
                                                jnp.zeros((1, 1, config.cross_attention_dim)), **added))["params"]
    check_params(params, expected, source)
    return params


def load_unet(folder: str | pathlib.Path, variant: str | None = None) -> tuple[SDUNetConfig, dict]:
    """``(config, params)`` of a diffusers UNet2DConditionModel folder (a pipeline's ``unet/``);
    ``variant``: ``fp16`` / ``bf16`` weight files (``diffusion.convert.tensors.weight_files``)."""
    config = read_config(folder, SDUNetConfig, "diffusers UNet2DConditionModel")
    return config, convert_unet(load_state_dict(folder, variant), config, str(folder))
