"""Shared config defaults; each experiment file overrides what it needs.

Sections: ``data``, ``model``, ``diffusion``, ``train``, ``mesh``, ``sample`` (grids
drawn during training) and ``eval`` (the FD-digits figure at the end).
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0

    c.data = ml_collections.ConfigDict()
    c.data.name = "digits"
    c.data.resolution = 8
    c.data.data_dir = config_dict.placeholder(str)  # TFDS data_dir (prepared data only)
    c.data.random_flip = False

    c.model = ml_collections.ConfigDict()
    c.model.channels = 32
    c.model.channel_mult = (1, 2)
    c.model.num_res_blocks = 2
    c.model.attn_resolutions = (4,)
    c.model.num_heads = 4
    c.model.dropout = 0.1
    c.model.scale_shift = True  # FiLM in residual blocks (ADM); False: DDPM's additive time embedding
    c.model.class_conditional = True
    c.model.context_dim = config_dict.placeholder(int)  # cross-attention width (text), off by default
    c.model.pred_type = "eps"  # eps | x0 | v
    c.model.dtype = "float32"  # float32 | bfloat16 (compute dtype; params stay float32)

    c.diffusion = ml_collections.ConfigDict()
    c.diffusion.schedule = "linear"  # linear | scaled_linear | cosine | cosine_logsnr
    c.diffusion.num_steps = 1000  # T of a discrete schedule
    c.diffusion.weighting = "eps"  # eps | v | x0 | snr_trunc
    c.diffusion.cond_drop_prob = 0.1  # label dropout: learns the unconditional branch for CFG

    c.train = ml_collections.ConfigDict()
    c.train.num_steps = 2500
    c.train.batch_size = 64  # global
    c.train.lr = 1e-3
    c.train.lr_schedule = "cosine"  # constant | cosine (after linear warmup)
    c.train.warmup_steps = 100
    c.train.weight_decay = 0.0
    c.train.grad_clip = 1.0
    c.train.ema_decay = 0.999
    c.train.log_every = 50
    c.train.ckpt_every = 500
    c.train.keep_last = 3
    c.train.keep_every = 0  # also keep every K-th step's checkpoint (0: off)
    c.train.sample_every = 1000
    c.train.max_consecutive_nonfinite = 20

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1  # -1: all remaining devices
    c.mesh.fsdp = 1

    c.sample = ml_collections.ConfigDict()
    c.sample.solver = "ddim"
    c.sample.steps = 50
    c.sample.grid = "trailing"
    c.sample.num = 100  # images per grid (10 per class when class-conditional)

    c.eval = ml_collections.ConfigDict()
    c.eval.fd_digits = True  # FD-digits at the end (digits datasets only)
    c.eval.solver = "ddim"
    c.eval.steps = 50
    c.eval.grid = "trailing"
    c.eval.num_samples = 1000
    c.eval.batch_size = 500
    return c


def shrink_for_smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The digits configs' ``:smoke`` variant: the same path end to end in well under a
    minute (a narrow model, a few steps, small sample and FD sets)."""
    c.model.channels = 8
    c.model.dropout = 0.0
    c.train.num_steps = 20
    c.train.batch_size = 16
    c.train.log_every = 5
    c.train.ckpt_every = 10
    c.train.sample_every = 10
    c.sample.steps = 5
    c.sample.num = 20
    c.eval.steps = 5
    c.eval.num_samples = 100
    c.eval.batch_size = 100
    return c


# Fields that may differ when resuming a work directory (run length and intervals).
RESUMABLE_KEYS = (
    "train.num_steps",
    "train.log_every",
    "train.ckpt_every",
    "train.keep_last",
    "train.keep_every",
    "train.sample_every",
    "sample",
    "eval",
)
