"""A toy sampling transform in one file, to show that the registry needs nothing else:
importing this module (or naming it in ``$KAIROS_PARTS``) makes ``x0_clip`` a
``launch.sample`` flag, a sweep key and a ``config.sample.sampler`` key.

``x0_clip=C`` is Imagen's static thresholding: the x0 prediction is clipped to
``[-C, C]`` and eps recomputed so that ``x_t = alpha x0 + sigma eps`` still holds.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from flax import struct

from diffusion.contract import COMPUTE
from diffusion.param import Prediction
from diffusion.schedules import Schedule, bcast_right
from sampling.registry import Knob, TransformPart, fmt, number, register


@struct.dataclass
class ClipX0:
    denoiser: Any
    limit: Any  # traced
    schedule: Schedule = struct.field(pytree_node=False)

    def __call__(self, params, x_t, t, cond=None, *, cache=None, step=None, modes=COMPUTE, rng=None, train=False):
        pred, cache = self.denoiser(params, x_t, t, cond, cache=cache, step=step, modes=modes, rng=rng, train=train)
        x0 = jnp.clip(pred.x0, -self.limit, self.limit)
        alpha, sigma = self.schedule.alpha_sigma(jnp.broadcast_to(jnp.asarray(t, jnp.float32), x_t.shape[:1]))
        eps = (x_t - bcast_right(alpha, x_t) * x0) / bcast_right(jnp.maximum(sigma, 1e-4), x_t)
        return Prediction(x0=x0, eps=eps), cache

    def init_cache(self, params, x_t, cond=None, num_steps=None, modes=COMPUTE):
        return self.denoiser.init_cache(params, x_t, cond, num_steps, modes)

    def step_plan(self, num_steps):
        return self.denoiser.step_plan(num_steps)


register(TransformPart(
    name="x0_clip", wraps="denoiser", order=95,
    build=lambda den, knobs, ctx: ClipX0(den, knobs["limit"], ctx.schedule),
    help="clip the x0 prediction to [-C, C] (static thresholding)",
    knobs=(Knob("limit", number(0.0), examples=(0.5, 1.0), help="the clip value C"),),
    tag=lambda k: f"clip{fmt(k['limit'])}"))
