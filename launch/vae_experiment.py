"""Training a KL autoencoder (``config.model.kind = "vae"``) with the shared loop, and
handing a trained one to a latent diffusion run.

A VAE run's work directory is like any other (config, checkpoints, metrics, resumable);
its callbacks write reconstruction grids (``samples/recon_XXXXXX.png``: originals on the
left half, reconstructions on the right) and, at the end, ``vae_eval.json``: the PSNR of
held-out reconstructions and the latent statistics that set the scaling factor.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from diffusion.nn.vae import AutoencoderKL, VAEConfig
from diffusion.train.loop import Callback
from diffusion.train.setup import state_factory
from diffusion.train.vae_objective import make_vae_loss
from launch import files

EVAL_FILE = "vae_eval.json"
STATS_IMAGES = 1024  # training images whose latent standard deviation sets the scaling factor


def vae_config(config: ml_collections.ConfigDict, channels: int) -> VAEConfig:
    """The ``VAEConfig`` of ``config.model.vae`` for images with ``channels`` channels."""
    from launch.components import config_from_fields

    fields = dict(config.model.get("vae") or {})
    fields.update(in_channels=channels, out_channels=channels)
    try:
        return config_from_fields(VAEConfig, fields)
    except TypeError as e:
        raise ValueError(f"config.model.vae: {e}") from None


def _images(source, num: int) -> np.ndarray:
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


def vae_experiment(config: ml_collections.ConfigDict):
    from launch.builders import build_source
    from launch.experiment import Experiment, make_optimizer_from

    source, info = build_source(config)
    vae = AutoencoderKL(vae_config(config, info.image_shape[-1]))
    if info.image_shape[0] % vae.config.downscale:
        raise ValueError(f"config.model.vae: {len(vae.config.block_out_channels)} levels downscale by "
                         f"{vae.config.downscale}, which does not divide the {info.image_shape[0]}-pixel images")
    optimizer = make_optimizer_from(config.train)
    x = jnp.zeros((1, *info.image_shape), jnp.float32)
    make = state_factory(lambda key: vae.init(key, x)["params"], optimizer, jax.random.PRNGKey(config.seed))
    loss_fn = make_vae_loss(vae, float(config.train.get("kl_weight", 1e-4)))
    from diffusion.data.pipeline import ImagesOnly

    return Experiment(None, None, source, info, optimizer, make, loss_fn, transforms=(ImagesOnly(),),
                      callbacks=lambda c, workdir: vae_callbacks(vae, c, workdir))


def vae_callbacks(vae: AutoencoderKL, config: ml_collections.ConfigDict, workdir: pathlib.Path) -> list[Callback]:
    from diffusion.metrics.grid import save_grid
    from diffusion.metrics.psnr import mean_psnr
    from launch.builders import build_source

    heldout, _ = build_source(config, "heldout")
    grid_images = _images(heldout, config.sample.num)

    def grid(step, state):
        _, recon = reconstruct(vae, state.ema_params, grid_images)
        if jax.process_index() == 0:
            pairs = np.concatenate([grid_images, np.clip(recon, -1, 1)], axis=2)
            save_grid(pairs, workdir / "samples" / f"recon_{step:06d}.png", scale=2)

    def final(step, state):
        images = _images(heldout, config.eval.num_samples)
        _, recon = reconstruct(vae, state.ema_params, images)
        result = {"step": step, "psnr_heldout": mean_psnr(recon, images), "num": len(images),
                  **latent_stats(vae, state.ema_params, config)}
        if jax.process_index() == 0:
            files.write_text(workdir / EVAL_FILE, json.dumps(result, indent=2) + "\n")
            print(f"VAE at step {step}: held-out PSNR {result['psnr_heldout']:.2f} dB, latent std "
                  f"{result['latent_std']:.3f} -> scaling factor {result['scaling_factor']:.4f}", flush=True)
        return {"psnr_heldout": result["psnr_heldout"]}

    return [Callback(grid, every=config.train.sample_every), Callback(final, at_end=True)]


def latent_stats(vae: AutoencoderKL, params, config: ml_collections.ConfigDict) -> dict:
    """The standard deviation of the posterior means of the first ``STATS_IMAGES``
    training images and the scaling factor ``1 / std`` (SD's convention: unit-variance
    latents for the diffusion model)."""
    from launch.builders import build_source

    train, _ = build_source(config, "train")
    means, _ = reconstruct(vae, params, _images(train, STATS_IMAGES))
    std = float(np.std(means))
    return {"latent_std": std, "scaling_factor": 1.0 / std, "latent_mean": float(np.mean(means))}


def trained_vae(workdir: str | pathlib.Path) -> tuple[VAEConfig, dict]:
    """``(config with its measured scaling factor, EMA params)`` of the newest checkpoint
    of a VAE work directory."""
    from diffusion.train import checkpoint
    from launch.builders import build_source
    from launch.workdir import read_config

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
