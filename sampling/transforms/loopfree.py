"""Loop-free sampling (TiUE, docs/design/tiue.md) as the ``loopfree`` part: the denoiser
runs the encoder once and the decoder once, batched over the run's grid, at step 0, keeps
the ``K`` raw outputs in the solver state's cache, and step ``k`` reads row ``k`` at the
current sample. Under DDIM (eta 0) this is :func:`sampling.loopfree.loopfree_chain`."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from diffusion.contract import COMPUTE, Modes
from diffusion.param import Prediction
from sampling.grids import make_grid
from sampling.loopfree import check_split, loopfree_predictions
from sampling.registry import Knob, TransformPart, choice, register

CACHE = "loopfree"


@struct.dataclass
class LoopFree:
    """``times [K]`` (traced): the grid's network times, ``times[0]`` the encoder's."""

    denoiser: Any
    times: jax.Array

    @property
    def schedule(self):
        return self.denoiser.schedule

    def init_cache(self, params, x_t, cond=None, num_steps=None, modes: Modes = COMPUTE):
        if num_steps is not None and num_steps != self.times.shape[0]:
            raise ValueError(f"loop-free sampling was built for {self.times.shape[0]} steps, the loop runs {num_steps}")
        shape = jax.eval_shape(lambda: loopfree_predictions(self.denoiser, params, self.times, x_t, cond))
        return {CACHE: jnp.zeros(shape.shape, shape.dtype)}

    def step_plan(self, num_steps: int):
        return self.denoiser.step_plan(num_steps)  # plain: reuse and caching are excluded

    def __call__(self, params, x_t, t, cond=None, *, cache=None, step=None, modes: Modes = COMPUTE, rng=None,
                 train: bool = False) -> tuple[Prediction, Any]:
        if step is None or not cache or CACHE not in cache:
            raise ValueError("loop-free sampling runs in sampling.loop.sample (it needs the step index and its cache)")
        if modes != COMPUTE:
            raise ValueError("loop-free sampling takes no attention reuse or feature cache")
        raw = jax.lax.cond(step == 0, lambda: loopfree_predictions(self.denoiser, params, self.times, x_t, cond),
                           lambda: cache[CACHE])
        return self.denoiser.prediction(raw[step], x_t, t), {**cache, CACHE: raw}


def _build(denoiser, knobs: dict, ctx):
    check_split(denoiser)
    if ctx.caps.frames is not None:
        raise ValueError("loop-free sampling is for image models; this is a video model")
    return LoopFree(denoiser, make_grid(ctx.grid, ctx.steps, ctx.schedule)[:-1])


register(TransformPart(
    name="loopfree", wraps="denoiser", order=0, build=_build,
    help="TiUE's loop-free sampling: on (one encoder call at the first grid time, one decoder call batched over "
         "the grid, DDIM's updates between)",
    knobs=(Knob("mode", choice("on"), traced=False, help="on", examples=("on",)),),
    excludes=("time_shift", "attention_reuse", "feature_cache", "plan"),
    network_calls=lambda steps, knobs: 1,
    tag=lambda k: "loopfree"))
