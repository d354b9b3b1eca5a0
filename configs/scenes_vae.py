"""The KL autoencoder of the digit scenes (32x32 grey -> 8x8x4 latents), first half of
the scenes job; ``configs/scenes.py`` trains the latent text-to-image UNet on it.

Usage::

    python -m launch.train --config configs/scenes_vae.py --workdir runs/scenes_vae
    python -m launch.train --config configs/scenes_vae.py:smoke --workdir runs/scenes_vae_smoke
"""

from configs.common import base_config


def get_config(arg: str | None = None):
    c = base_config()
    c.data.name = "scenes"
    c.data.resolution = 32
    c.model.kind = "vae"
    c.model.vae = dict(block_out_channels=(16, 32, 32), layers_per_block=1, latent_channels=4, norm_num_groups=8)
    c.train.kl_weight = 1e-4  # per-element KL against a per-pixel L1: latents stay near unit scale, detail kept
    c.train.num_steps = 2000  # 13.4 min at 3000 made the job 47 min on the 2026-12-03 machine
    c.train.batch_size = 32
    c.train.lr = 1e-3
    c.train.ema_decay = 0.999
    c.train.sample_every = 1000
    c.train.ckpt_every = 500
    c.sample.num = 20
    c.eval.num_samples = 500
    c.eval.fd_digits = False
    if arg == "smoke":
        c.model.vae = dict(block_out_channels=(8, 16, 16), layers_per_block=1, latent_channels=4, norm_num_groups=4)
        c.train.num_steps = 10
        c.train.batch_size = 16
        c.train.log_every = 5
        c.train.ckpt_every = 5
        c.train.sample_every = 10
        c.sample.num = 4
        c.eval.num_samples = 32
    elif arg:
        raise ValueError(f"unknown variant {arg!r} of configs/scenes_vae.py; use '' or 'smoke'")
    return c
