"""Builds the pieces of an experiment from its config sections (plain arguments inward).

What a run's model can do (class labels, a guidance input, skip branches) is read from
its config here (:func:`model_caps`), never by probing the network.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from diffusion.data import DatasetInfo, make_source
from diffusion.nn.denoiser import Denoiser
from diffusion.nn.unet import UNet
from diffusion.schedules import Schedule, make_schedule
from distill import registry as distill_registry
from sampling.registry import ModelCaps

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def build_schedule(diffusion: ml_collections.ConfigDict) -> Schedule:
    return make_schedule(diffusion.schedule, diffusion.num_steps)


def build_unet(model: ml_collections.ConfigDict, info: DatasetInfo) -> UNet:
    if model.dtype not in DTYPES:
        raise ValueError(f"unknown config.model.dtype {model.dtype!r}; expected one of {sorted(DTYPES)}")
    if model.class_conditional and info.num_classes is None:
        raise ValueError("config.model.class_conditional=True but the dataset has no labels; set it to False")
    return UNet(
        channels=model.channels,
        channel_mult=tuple(model.channel_mult),
        num_res_blocks=model.num_res_blocks,
        attn_resolutions=tuple(model.attn_resolutions),
        num_heads=model.num_heads,
        dropout=model.dropout,
        scale_shift=model.scale_shift,
        num_classes=info.num_classes if model.class_conditional else None,
        guidance_embed=model.guidance_embed,
        out_channels=info.image_shape[-1],
        dtype=DTYPES[model.dtype],
    )


def build_denoiser(config: ml_collections.ConfigDict, info: DatasetInfo):
    """The run's denoiser; a student's as its distiller wraps it (``Distiller.wrap``: a
    consistency student's is its consistency function)."""
    denoiser = Denoiser(build_unet(config.model, info), build_schedule(config.diffusion), config.model.pred_type)
    if config.get("distill") is not None:
        return distill_registry.get(config.distill.method).wrap(denoiser)
    return denoiser


def model_caps(config: ml_collections.ConfigDict, info: DatasetInfo) -> ModelCaps:
    """What the run's model can do, for building samplers (``sampling.registry.ModelCaps``)."""
    return ModelCaps(
        null_label=info.num_classes if config.model.class_conditional else None,
        w_conditioned=bool(config.model.guidance_embed),
        self_attention=True,  # every UNet has its middle attention block
        feature_branches=build_unet(config.model, info).num_branches,
    )


def build_source(config: ml_collections.ConfigDict, split: str = "train"):
    """``(source, DatasetInfo)`` of ``config.data``."""
    return make_source(config.data.name, split, resolution=config.data.resolution, data_dir=config.data.data_dir)


def init_params(config: ml_collections.ConfigDict, info: DatasetInfo, key: jax.Array):
    """Fresh network parameters: ``module.init`` on ``x [1, H, W, C]``, ``t [1]``, a label
    when class-conditional, a guidance scale when w-conditioned."""
    args = [jnp.zeros((1, *info.image_shape), jnp.float32), jnp.zeros((1,))]
    kwargs = {"label": jnp.zeros((1,), jnp.int32)} if config.model.class_conditional else {}
    if config.model.guidance_embed:
        kwargs["guidance"] = jnp.ones((1,))
    return build_unet(config.model, info).init(key, *args, **kwargs)["params"]
