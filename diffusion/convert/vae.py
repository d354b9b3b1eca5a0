"""diffusers ``AutoencoderKL`` checkpoints -> :class:`diffusion.nn.vae.AutoencoderKL` params.

Attention tensors may carry today's names (``to_q``, ``to_k``, ``to_v``, ``to_out.0``)
or the names of older SD checkpoints (``query``, ``key``, ``value``, ``proj_attn``).
"""

from __future__ import annotations

import pathlib
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from diffusion.convert.tensors import StateDict, check_params, load_state_dict, read_config
from diffusion.nn.vae import AutoencoderKL, VAEConfig

_OLD_ATTENTION = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out_0": "proj_attn"}


def _resnet(sd: StateDict, p: str) -> dict:
    out = {n: sd.norm(f"{p}.{n}") for n in ("norm1", "norm2")}
    out.update({n: sd.conv(f"{p}.{n}") for n in ("conv1", "conv2")})
    if sd.has(f"{p}.conv_shortcut.weight"):
        out["conv_shortcut"] = sd.conv(f"{p}.conv_shortcut")
    return out


def _mid(sd: StateDict, p: str, attention: bool) -> dict:
    out = {"resnets_0": _resnet(sd, f"{p}.resnets.0"), "resnets_1": _resnet(sd, f"{p}.resnets.1")}
    if attention:
        a = f"{p}.attentions.0"
        att = {"group_norm": sd.norm(f"{a}.group_norm")}
        for ours, new in (("to_q", "to_q"), ("to_k", "to_k"), ("to_v", "to_v"), ("to_out_0", "to_out.0")):
            name = new if sd.has(f"{a}.{new}.weight") else _OLD_ATTENTION[ours]
            att[ours] = sd.linear(f"{a}.{name}")  # old checkpoints store 1x1 conv weights here: accepted
        out["attentions_0"] = att
    return out


def convert_vae(tensors: Mapping[str, np.ndarray], config: VAEConfig, source: str) -> dict:
    """Flax params from an AutoencoderKL state dict (keys ``encoder.*``, ``decoder.*``,
    ``quant_conv.*``, ``post_quant_conv.*``)."""
    sd = StateDict(tensors, source)
    levels = len(config.block_out_channels)
    enc = {"conv_in": sd.conv("encoder.conv_in"), "conv_out": sd.conv("encoder.conv_out"),
           "conv_norm_out": sd.norm("encoder.conv_norm_out"),
           "mid_block": _mid(sd, "encoder.mid_block", config.mid_block_add_attention)}
    dec = {"conv_in": sd.conv("decoder.conv_in"), "conv_out": sd.conv("decoder.conv_out"),
           "conv_norm_out": sd.norm("decoder.conv_norm_out"),
           "mid_block": _mid(sd, "decoder.mid_block", config.mid_block_add_attention)}
    for i in range(levels):
        for j in range(config.layers_per_block):
            enc[f"down_blocks_{i}_resnets_{j}"] = _resnet(sd, f"encoder.down_blocks.{i}.resnets.{j}")
        for j in range(config.layers_per_block + 1):
            dec[f"up_blocks_{i}_resnets_{j}"] = _resnet(sd, f"decoder.up_blocks.{i}.resnets.{j}")
        if i != levels - 1:
            enc[f"down_blocks_{i}_downsamplers_0_conv"] = sd.conv(f"encoder.down_blocks.{i}.downsamplers.0.conv")
            dec[f"up_blocks_{i}_upsamplers_0_conv"] = sd.conv(f"decoder.up_blocks.{i}.upsamplers.0.conv")
    params = {"encoder": enc, "decoder": dec}
    if config.use_quant_conv:
        params["quant_conv"] = sd.conv("quant_conv")
    if config.use_post_quant_conv:
        params["post_quant_conv"] = sd.conv("post_quant_conv")
    sd.finish()
    f = config.downscale
    expected = jax.eval_shape(lambda: AutoencoderKL(config).init(
        jax.random.PRNGKey(0), jnp.zeros((1, f, f, config.in_channels))))["params"]
    check_params(params, expected, source)
    return params


def load_vae(folder: str | pathlib.Path, variant: str | None = None) -> tuple[VAEConfig, dict]:
    """``(config, params)`` of a diffusers AutoencoderKL folder (a pipeline's ``vae/``);
    ``variant``: ``fp16`` / ``bf16`` weight files (``diffusion.convert.tensors.weight_files``)."""
    config = read_config(folder, VAEConfig, "diffusers AutoencoderKL")
    return config, convert_vae(load_state_dict(folder, variant), config, str(folder))
