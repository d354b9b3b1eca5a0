"""A KL autoencoder run (``config.model.kind = "vae"``) from its config and work directory:
its ``VAEConfig``, reconstructions, the latent statistics that set the scaling factor, and
a trained one handed to a latent diffusion run (:func:`trained_vae`). Its training is
``orchestration/experiments/vae_training.py``.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from diffusion.nn.vae import AutoencoderKL, VAEConfig
from diffusion.train import checkpoint
from orchestration.build.builders import build_source
from orchestration.workdir.components import config_from_fields
from orchestration.workdir.directory import read_config

STATS_IMAGES = 1024  # training images whose latent standard deviation sets the scaling factor


def vae_config(config: ml_collections.ConfigDict, channels: int) -> VAEConfig:
    """The ``VAEConfig`` of ``config.model.vae`` for images with ``channels`` channels."""
    fields = dict(config.model.get("vae") or {})
    fields.update(in_channels=channels, out_channels=channels)
    try:
        return config_from_fields(VAEConfig, fields)
    except TypeError as e:
        raise ValueError(f"config.model.vae: {e}") from None


def images_of(source, num: int) -> np.ndarray:
    return np.stack([source[i]["image"] for i in range(min(num, len(source)))]).astype(np.float32)


@functools.partial(jax.jit, static_argnames=("vae",))
def _encode_decode(vae, params, x):
    mean, _ = vae.apply({"params": params}, x, method=AutoencoderKL.encode)
    return mean, vae.apply({"params": params}, mean, method=AutoencoderKL.decode)


def reconstruct(vae: AutoencoderKL, params, images: np.ndarray, batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """``(posterior means, reconstructions of the means)`` of ``images [N, H, W, C]``."""
    means, recons = [], []
    for start in range(0, len(images), batch):
        chunk = images[start:start + batch]
        k = len(chunk)
        m, r = _encode_decode(vae, params, np.resize(chunk, (batch, *chunk.shape[1:])))
        means.append(np.asarray(m)[:k])
        recons.append(np.asarray(r)[:k])
    return np.concatenate(means), np.concatenate(recons)


def latent_stats(vae: AutoencoderKL, params, config: ml_collections.ConfigDict) -> dict:
    """The standard deviation of the posterior means of the first ``STATS_IMAGES``
    training images and the scaling factor ``1 / std`` (SD's convention: unit-variance
    latents for the diffusion model)."""
    train, _ = build_source(config, "train")
    means, _ = reconstruct(vae, params, images_of(train, STATS_IMAGES))
    std = float(np.std(means))
    return {"latent_std": std, "scaling_factor": 1.0 / std, "latent_mean": float(np.mean(means))}


def trained_vae(workdir: str | pathlib.Path) -> tuple[VAEConfig, dict]:
    """``(config with its measured scaling factor, EMA params)`` of the newest checkpoint
    of a VAE work directory."""
    workdir = pathlib.Path(workdir)
    if not (workdir / "config.json").is_file():
        raise FileNotFoundError(f"{workdir} has no config.json: not a Kairos VAE work directory (train one with "
                                "`python -m launch.train --config configs/scenes_vae.py --workdir ...`)")
    config = ml_collections.ConfigDict(read_config(workdir / "config.json"))
    if config.model.get("kind") != "vae":
        raise ValueError(f"{workdir} holds a {config.model.get('kind')!r} model, not a VAE (model.kind='vae')")
    _, info = build_source(config)
    vae = AutoencoderKL(vae_config(config, info.image_shape[-1]))
    manager = checkpoint.reader(workdir)
    try:
        steps = sorted(manager.all_steps())
        if not steps or steps[-1] < config.train.num_steps:
            raise ValueError(f"the VAE in {workdir} is not trained to its end (checkpoints: {steps}, "
                             f"train.num_steps={config.train.num_steps}); finish its training first")
        shapes = jax.eval_shape(lambda: vae.init(jax.random.PRNGKey(0), jnp.zeros((1, *info.image_shape)))["params"])
        one = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        abstract = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=one), shapes)
        params = checkpoint.restore_subtree(manager, steps[-1], {"ema_params": abstract})["ema_params"]
    finally:
        manager.close()
    stats = latent_stats(vae, params, config)
    return dataclasses.replace(vae.config, scaling_factor=stats["scaling_factor"]), jax.device_get(params)
