"""The KL autoencoder's training loss (Rombach et al. 2022, without the perceptual and
adversarial terms): ``loss_fn(params, batch, rng, state) -> (loss, aux)``.

``loss = mean |x - decode(z)| + kl_weight * KL(q(z|x) || N(0, I))``, ``z`` a posterior
sample (reparameterised); the reconstruction is a per-pixel mean, the KL a per-latent-
element mean, so ``kl_weight`` does not depend on the image or latent size.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from diffusion.nn.vae import AutoencoderKL
from diffusion.train.state import TrainState


def gaussian_kl(mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """``KL(N(mean, exp(logvar)) || N(0, 1))`` per element (closed form)."""
    return 0.5 * (mean**2 + jnp.exp(logvar) - 1.0 - logvar)


def make_vae_loss(vae: AutoencoderKL, kl_weight: float):
    """The loss for ``batch = {"image": [B, H, W, C] in [-1, 1]}``; aux: ``l1``, ``kl``."""

    def loss_fn(params, batch, rng, state: TrainState):
        x = batch["image"]
        mean, logvar = vae.apply({"params": params}, x, method=AutoencoderKL.encode)
        z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mean.shape, mean.dtype)
        recon = vae.apply({"params": params}, z, method=AutoencoderKL.decode)
        l1 = jnp.mean(jnp.abs(recon - x))
        kl = jnp.mean(gaussian_kl(mean, logvar))
        return l1 + kl_weight * kl, {"l1": l1, "kl": kl}

    return loss_fn
