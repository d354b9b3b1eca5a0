"""The digits model with v-prediction: the teacher of the distillation configs.

    python -m launch.train --config configs/digits_v.py --workdir runs/digits_v

The same network, schedule and run as configs/digits.py; only the output is v = alpha
eps - sigma x0 (trained with the v-MSE weighting). Progressive and guided distillation need
a v or x0 teacher: an eps network's x0 = (x_t - sigma eps) / alpha blows up at t = 1.
"""

from configs import digits


def get_config(arg: str | None = None):
    if arg not in (None, "", "smoke"):
        raise ValueError(f"unknown variant {arg!r} of configs/digits_v.py; use '' or 'smoke'")
    c = digits.get_config(arg)
    c.model.pred_type = "v"
    c.diffusion.weighting = "v"
    return c
