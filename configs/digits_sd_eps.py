"""The digits model with eps-prediction on Stable Diffusion's scaled-linear schedule: TiUE's
teacher (configs/digits_tiue.py), as the reference distils SD 2.1-base, an eps network on
these betas (docs/design/tiue.md).

    python -m launch.train --config configs/digits_sd_eps.py --workdir runs/digits_sd_eps

The same network and run as configs/digits.py (eps output, eps-MSE weighting); only the betas
are SD's (0.00085..0.012 linear in sqrt(beta), ``diffusion.schedule = "scaled_linear"``), so a
student on diffusers' leading grid [751, 501, 251, 1] sees SD's noise levels there
(alpha = 0.236, 0.524, 0.820, 0.9991) and its KL reads the network's own noise maps.
"""

from configs import digits


def get_config(arg: str | None = None):
    if arg not in (None, "", "smoke"):
        raise ValueError(f"unknown variant {arg!r} of configs/digits_sd_eps.py; use '' or 'smoke'")
    c = digits.get_config(arg)
    c.diffusion.schedule = "scaled_linear"
    c.model.pred_type = "eps"
    c.diffusion.weighting = "eps"
    return c
