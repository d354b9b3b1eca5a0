"""Class-conditional UNet on the bundled digits (8x8), the default Kairos experiment.

Usage::

    python -m launch.train --config configs/digits.py --workdir runs/digits
    python -m launch.train --config configs/digits.py:smoke --workdir /tmp/smoke

Sized from measurement (docs/digits.md): finishes in <= 15 minutes on 2 CPU cores.
"""

from configs.common import base_config


def get_config(arg: str | None = None):
    c = base_config()
    if arg == "smoke":  # the same path end to end in well under a minute
        c.model.channels = 8
        c.model.num_res_blocks = 1
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
    elif arg:
        raise ValueError(f"unknown variant {arg!r} of configs/digits.py; use '' or 'smoke'")
    return c
