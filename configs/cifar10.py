"""The DDPM paper's CIFAR-10 setup (Ho et al. 2020, 35.7M-parameter UNet), read through TFDS.

Needs CIFAR-10 prepared as TFDS data (``tfds build cifar10`` on a machine with network,
then copy ``~/tensorflow_datasets`` and set ``--config.data.data_dir``); Kairos never
downloads. ``:smoke`` is a tiny model for tests (on ``tfds.testing.mock_data``).

With ``scale_shift=False`` (DDPM's additive time embedding) the UNet has 35.75M
parameters, the paper's 35.7M (tests/orchestration/test_experiment.py checks the count).
Sample a run with ``launch.sample``; ``launch.evaluate`` has no CIFAR-10 metric (no FID yet).
"""

from configs.common import base_config


def get_config(arg: str | None = None):
    c = base_config()
    c.data.name = "cifar10"
    c.data.resolution = 32
    c.data.random_flip = True

    c.model.channels = 128
    c.model.channel_mult = (1, 2, 2, 2)
    c.model.num_res_blocks = 2
    c.model.attn_resolutions = (16,)
    c.model.num_heads = 1
    c.model.dropout = 0.1
    c.model.scale_shift = False  # DDPM's residual block
    c.model.class_conditional = False  # the paper's model is unconditional

    c.diffusion.schedule = "linear"
    c.diffusion.num_steps = 1000
    c.diffusion.weighting = "eps"
    c.diffusion.cond_drop_prob = 0.0

    c.train.num_steps = 800_000
    c.train.batch_size = 128
    c.train.lr = 2e-4
    c.train.lr_schedule = "constant"
    c.train.warmup_steps = 5000
    c.train.grad_clip = 1.0
    c.train.ema_decay = 0.9999
    c.train.log_every = 100
    c.train.ckpt_every = 5000
    c.train.keep_every = 50_000
    c.train.sample_every = 10_000

    c.sample.num = 64
    c.eval.fd_digits = False  # FD-digits is for digits, and there is no FID yet: sample with launch.sample

    if arg == "smoke":
        c.model.channels = 8
        c.model.channel_mult = (1, 2)
        c.model.num_res_blocks = 1
        c.model.attn_resolutions = (16,)
        c.model.num_heads = 1
        c.train.num_steps = 6
        c.train.batch_size = 8
        c.train.warmup_steps = 2
        c.train.log_every = 2
        c.train.ckpt_every = 3
        c.train.sample_every = 6
        c.sample.sampler = "solver=ddim;steps=3;grid=trailing"
        c.sample.num = 8
    elif arg:
        raise ValueError(f"unknown variant {arg!r} of configs/cifar10.py; use '' or 'smoke'")
    return c
