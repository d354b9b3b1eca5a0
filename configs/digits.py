"""Class-conditional UNet on the bundled digits (8x8), the default Kairos experiment.

Usage::

    python -m launch.train --config configs/digits.py --workdir runs/digits
    python -m launch.train --config configs/digits.py:smoke --workdir /tmp/smoke

Sized from measurement (docs/digits.md): finishes in <= 15 minutes on 2 CPU cores.
"""

from configs.common import base_config, shrink_for_smoke


def get_config(arg: str | None = None):
    c = base_config()
    if arg == "smoke":  # the same path end to end in well under a minute
        shrink_for_smoke(c)
        c.model.num_res_blocks = 1
    elif arg:
        raise ValueError(f"unknown variant {arg!r} of configs/digits.py; use '' or 'smoke'")
    return c
