"""Digits at 16x16 with self-attention at the top resolution (256 tokens): the model for
attention-map reuse and feature caching (issue 4), where attention must be a real share
of the cost.

Usage::

    python -m launch.train --config configs/digits16.py --workdir runs/digits16
    python -m launch.train --config configs/digits16.py:smoke --workdir /tmp/smoke16

The 16x16 images are the 8x8 digits upsampled (nearest); FD-digits pools back to 8x8.
Sized from measurement (docs/results/reuse_and_caching.md): attention at 16x16 and 8x8
in every block, one residual block per level, batch 32, so a training run takes ~20
minutes on 2 CPU cores.
"""

from configs.common import base_config, shrink_for_smoke


def get_config(arg: str | None = None):
    c = base_config()
    c.data.resolution = 16
    c.model.channels = 32
    c.model.channel_mult = (1, 2)
    c.model.num_res_blocks = 1
    c.model.attn_resolutions = (16, 8)
    c.model.num_heads = 4
    c.model.dropout = 0.0
    c.train.batch_size = 32  # ~0.5 s/step on 2 CPU cores (batch 64: ~1.1 s)
    c.train.num_steps = 2000
    c.train.sample_every = 1000
    if arg == "smoke":
        shrink_for_smoke(c)
        c.model.num_heads = 2
        c.train.num_steps = 10
    elif arg:
        raise ValueError(f"unknown variant {arg!r} of configs/digits16.py; use '' or 'smoke'")
    return c
