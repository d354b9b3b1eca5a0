"""Training a KL autoencoder (``config.model.kind = "vae"``) with the shared loop.

A VAE run's work directory is like any other (config, checkpoints, metrics, resumable);
its callbacks write reconstruction grids (``samples/recon_XXXXXX.png``: originals on the
left half, reconstructions on the right) and, at the end, ``vae_eval.json``: the PSNR of
held-out reconstructions and the latent statistics that set the scaling factor
(``orchestration/build/vae.py``, which also hands a trained VAE to a latent diffusion run).
"""

from __future__ import annotations

import json
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from diffusion.data.pipeline import ImagesOnly
from diffusion.metrics.grid import save_grid
from diffusion.metrics.psnr import mean_psnr
from diffusion.nn.vae import AutoencoderKL
from diffusion.train.loop import Callback
from diffusion.train.setup import state_factory
from diffusion.train.vae_objective import make_vae_loss
from orchestration.build.builders import build_source, make_optimizer_from
from orchestration.build.vae import images_of, latent_stats, reconstruct, vae_config
from orchestration.experiments.runner import Experiment
from orchestration.workdir import files

EVAL_FILE = "vae_eval.json"


def vae_experiment(config: ml_collections.ConfigDict) -> Experiment:
    """The ``Experiment`` that trains the VAE of ``config.model.vae`` on ``config.data``."""
    source, info = build_source(config)
    vae = AutoencoderKL(vae_config(config, info.image_shape[-1]))
    if info.image_shape[0] % vae.config.downscale:
        raise ValueError(f"config.model.vae: {len(vae.config.block_out_channels)} levels downscale by "
                         f"{vae.config.downscale}, which does not divide the {info.image_shape[0]}-pixel images")
    optimizer = make_optimizer_from(config.train)
    x = jnp.zeros((1, *info.image_shape), jnp.float32)
    make = state_factory(lambda key: vae.init(key, x)["params"], optimizer, jax.random.PRNGKey(config.seed))
    loss_fn = make_vae_loss(vae, float(config.train.get("kl_weight", 1e-4)))
    return Experiment(None, None, source, info, optimizer, make, loss_fn, transforms=(ImagesOnly(),),
                      callbacks=lambda c, workdir: vae_callbacks(vae, c, workdir))


def vae_callbacks(vae: AutoencoderKL, config: ml_collections.ConfigDict, workdir: pathlib.Path) -> list[Callback]:
    heldout, _ = build_source(config, "heldout")
    grid_images = images_of(heldout, config.sample.num)

    def grid(step, state):
        _, recon = reconstruct(vae, state.ema_params, grid_images)
        if jax.process_index() == 0:
            pairs = np.concatenate([grid_images, np.clip(recon, -1, 1)], axis=2)
            save_grid(pairs, workdir / "samples" / f"recon_{step:06d}.png", scale=2)

    def final(step, state):
        images = images_of(heldout, config.eval.num_samples)
        _, recon = reconstruct(vae, state.ema_params, images)
        result = {"step": step, "psnr_heldout": mean_psnr(recon, images), "num": len(images),
                  **latent_stats(vae, state.ema_params, config)}
        if jax.process_index() == 0:
            files.write_text(workdir / EVAL_FILE, json.dumps(result, indent=2) + "\n")
            print(f"VAE at step {step}: held-out PSNR {result['psnr_heldout']:.2f} dB, latent std "
                  f"{result['latent_std']:.3f} -> scaling factor {result['scaling_factor']:.4f}", flush=True)
        return {"psnr_heldout": result["psnr_heldout"]}

    return [Callback(grid, every=config.train.sample_every, at_end=config.train.sample_every > 0),
            Callback(final, at_end=True)]
