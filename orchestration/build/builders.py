"""Builds the pieces of an experiment from its config sections (plain arguments inward).

What a run's model can do (class labels, a guidance input, skip branches) is read from
its config here (:func:`model_caps`), never by probing the network.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from diffusion.data import DatasetInfo, make_source
from diffusion.nn.denoiser import Denoiser
from diffusion.nn.sd_unet import SDUNet, SDUNetConfig
from diffusion.nn.unet import UNet
from diffusion.schedules import Schedule, make_schedule
from diffusion.train.optim import make_optimizer
from distill import registry as distill_registry
from orchestration.workdir.components import config_from_fields
from sampling.registry import ModelCaps

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
MODEL_KINDS = ("unet", "sd_unet")  # config.model.kind: the ADM UNet, or diffusers' UNet2DConditionModel


def build_schedule(diffusion: ml_collections.ConfigDict) -> Schedule:
    betas = {k: diffusion.get(k) for k in ("beta_start", "beta_end") if diffusion.get(k) is not None}
    if betas and diffusion.schedule not in ("linear", "scaled_linear"):
        raise ValueError(f"config.diffusion.beta_start / beta_end apply to the linear and scaled_linear schedules, "
                         f"not {diffusion.schedule!r}; unset them")
    return make_schedule(diffusion.schedule, diffusion.num_steps, **betas)


def sd_unet_config(model: ml_collections.ConfigDict) -> SDUNetConfig:
    """The ``SDUNetConfig`` of ``config.model.sd_unet`` (its fields, as JSON)."""
    fields = model.get("sd_unet")
    if fields is None:
        raise ValueError("config.model.kind='sd_unet' needs config.model.sd_unet (the fields of SDUNetConfig)")
    try:
        return config_from_fields(SDUNetConfig, dict(fields))
    except TypeError as e:
        raise ValueError(f"config.model.sd_unet: {e}") from None


def model_kind(config: ml_collections.ConfigDict) -> str:
    kind = config.model.get("kind", "unet")
    if kind == "vae":
        raise ValueError("this run trains a VAE (config.model.kind='vae'), not a diffusion model: sample a latent "
                         "diffusion model that names it in config.latent.vae")
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown config.model.kind={kind!r}; expected one of {', '.join(MODEL_KINDS)}")
    return kind


def sample_shape(config: ml_collections.ConfigDict, info: DatasetInfo) -> tuple[int, int, int]:
    """What the model samples: the images' shape, or for an SD UNet ``(sample_size,
    sample_size, in_channels)`` (the latent shape of a latent model)."""
    if model_kind(config) == "sd_unet":
        c = sd_unet_config(config.model)
        return (c.sample_size, c.sample_size, c.in_channels)
    return info.image_shape if info.num_frames is None else (info.num_frames, *info.image_shape)


def build_network(config: ml_collections.ConfigDict, info: DatasetInfo):
    """The run's network module (``config.model.kind``)."""
    if info.num_frames is not None and model_kind(config) != "unet":
        raise ValueError(f"a video dataset ({config.data.name}) needs config.model.kind='unet' (the video UNet); "
                         f"got {model_kind(config)!r}")
    if model_kind(config) == "unet":
        if config.get("text") is not None or config.get("latent") is not None:
            raise ValueError("text conditioning and latent diffusion need config.model.kind='sd_unet'")
        return build_unet(config.model, info)
    if config.model.dtype not in DTYPES:
        raise ValueError(f"unknown config.model.dtype {config.model.dtype!r}; expected one of {sorted(DTYPES)}")
    if config.model.class_conditional or config.model.guidance_embed:
        raise ValueError("the SD UNet takes no class labels nor a guidance input: set config.model.class_conditional "
                         "and config.model.guidance_embed to False (condition it on text with config.text)")
    if config.get("text") is None:
        raise ValueError("the SD UNet is text-conditioned: set config.text (the text encoder)")
    return SDUNet(sd_unet_config(config.model), num_train_timesteps=config.diffusion.num_steps,
                  dtype=DTYPES[config.model.dtype], remat=config.model.get("remat", "off"),
                  dropout=config.model.dropout)


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
        temporal=info.num_frames is not None,  # a video dataset gets the video UNet (docs/design/video.md)
        temporal_cond=model.get("temporal_cond", "adaln_zero"),  # "none": video runs from before issue 26
        dtype=DTYPES[model.dtype],
        remat=model.get("remat", "off"),
    )


def build_denoiser(config: ml_collections.ConfigDict, info: DatasetInfo):
    """The run's denoiser; a student's as its distiller wraps it (``Distiller.wrap``: a
    consistency student's is its consistency function)."""
    denoiser = Denoiser(build_network(config, info), build_schedule(config.diffusion), config.model.pred_type)
    if config.get("distill") is not None:
        return distill_registry.get(config.distill.method).wrap(denoiser)
    return denoiser


def model_caps(config: ml_collections.ConfigDict, info: DatasetInfo) -> ModelCaps:
    """What the run's model can do, for building samplers (``sampling.registry.ModelCaps``)."""
    return ModelCaps(
        null_label=info.num_classes if config.model.class_conditional else None,
        w_conditioned=bool(config.model.guidance_embed),
        self_attention=True,  # every UNet has its middle attention block
        feature_branches=build_network(config, info).num_branches,
        text=config.get("text") is not None,
        frames=info.num_frames,
    )


def build_source(config: ml_collections.ConfigDict, split: str = "train"):
    """``(source, DatasetInfo)`` of ``config.data``; the train split cut to its first
    ``data.max_per_class`` examples of each class when set (:func:`first_per_class`)."""
    source, info = make_source(config.data.name, split, resolution=config.data.resolution,
                               data_dir=config.data.data_dir, frames=config.data.get("frames"),
                               video_key=config.data.get("video_key"), captions=config.get("text") is not None)
    n = config.data.get("max_per_class")
    if n is not None and split == "train":
        source = first_per_class(source, n, config.data.name)
        info = dataclasses.replace(info, size=len(source))
    return source, info


def first_per_class(source, n: int, name: str = "the dataset"):
    """An ``ArraySource`` of the first ``n`` examples of every class of ``source`` (an
    in-memory labelled source), in the source's order (a few-shot target set, as
    DreamBooth's few instance images)."""
    from diffusion.data.sources import ArraySource

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"config.data.max_per_class must be an integer >= 1 (None: all examples), got {n!r}")
    if not isinstance(source, ArraySource):
        raise ValueError(f"config.data.max_per_class needs an in-memory labelled dataset (digits, digits_thick); "
                         f"{name!r} is not one: unset it")
    keep = np.concatenate([np.flatnonzero(source.labels == c)[:n] for c in np.unique(source.labels)])
    keep.sort()
    return ArraySource(source.images[keep], source.labels[keep])


def network_inputs(config: ml_collections.ConfigDict, info: DatasetInfo, batch: int) -> dict[str, jax.ShapeDtypeStruct]:
    """The network's inputs for ``batch`` samples, abstract: ``x [batch, *sample_shape]``,
    ``t [batch]``, a ``label`` when class-conditional, a ``guidance`` scale when
    w-conditioned, a ``context [batch, max_length, cross_attention_dim]`` for a text model (and
    SDXL's ``text_embeds [batch, P]`` and ``time_ids [batch, 6]``)."""
    f32 = jnp.float32
    inputs = {"x": jax.ShapeDtypeStruct((batch, *sample_shape(config, info)), f32),
              "t": jax.ShapeDtypeStruct((batch,), f32)}
    if config.model.class_conditional:
        inputs["label"] = jax.ShapeDtypeStruct((batch,), jnp.int32)
    if config.model.guidance_embed:
        inputs["guidance"] = jax.ShapeDtypeStruct((batch,), f32)
    if config.get("text") is not None:
        unet = sd_unet_config(config.model)
        inputs["context"] = jax.ShapeDtypeStruct((batch, config.text.max_length, unet.cross_attention_dim), f32)
        if unet.addition_time_embed_dim:  # SDXL's added conditions
            inputs["text_embeds"] = jax.ShapeDtypeStruct((batch, unet.pooled_dim), f32)
            inputs["time_ids"] = jax.ShapeDtypeStruct((batch, 6), f32)
    return inputs


def init_params(config: ml_collections.ConfigDict, info: DatasetInfo, key: jax.Array):
    """Fresh network parameters: ``module.init`` on :func:`network_inputs` of one sample
    (zeros; a guidance scale of one)."""
    inputs = {k: (jnp.ones if k == "guidance" else jnp.zeros)(v.shape, v.dtype)
              for k, v in network_inputs(config, info, 1).items()}
    return build_network(config, info).init(key, inputs.pop("x"), inputs.pop("t"), **inputs)["params"]


def make_optimizer_from(train: ml_collections.ConfigDict, round_steps: int = 0):
    """The optax optimizer of ``config.train`` (``round_steps``: a distillation round's length)."""
    return make_optimizer(train.lr, train.warmup_steps, train.num_steps, schedule=train.lr_schedule,
                          weight_decay=train.weight_decay, grad_clip=train.grad_clip, round_steps=round_steps)
