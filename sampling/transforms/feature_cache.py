"""Feature caching across sampling steps (DeepCache / A-SDM feature inheritance) as a
denoiser transform, registered as the ``feature_cache`` part.

On a cached step only the shallow encoder/decoder path of one skip branch runs, on the
deep feature cached at the last full step. The **traced** boolean schedule ``[N]`` becomes
the feature codes of the step plan (``diffusion.contract.read_plan``); the sampling loop
runs each step's variant (docs/design/caching.md). A new schedule does not recompile.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from diffusion.contract import COMPUTE, Modes, StepPlan, read_plan
from diffusion.param import Prediction
from sampling.registry import Knob, TransformPart, fmt, integer, register
from sampling.transforms.schedules import check_length, nonuniform_full, uniform_full

DEFAULT_POW = 1.2  # sample_from_quad_center's default power


@struct.dataclass
class FeatureCache:
    """``full: bool [N]`` (traced): a full step runs the whole UNet and caches the deep
    feature entering the shallow decoder path of skip branch ``branch`` (static; 0 is
    the shallowest and cheapest); other steps run only that shallow path on the cached
    feature. Step 0 is always full. All-True equals the plain denoiser. A call runs the
    feature mode it is given (the loop's plan) on branch ``branch``."""

    denoiser: Any
    full: jax.Array
    branch: int = struct.field(pytree_node=False, default=0)

    def init_cache(self, params, x_t, cond=None, num_steps=None, modes: Modes = COMPUTE):
        check_length("feature cache", self.full, num_steps)
        return self.denoiser.init_cache(params, x_t, cond, num_steps,
                                        modes.replace(features="store", feature_branch=self.branch))

    def step_plan(self, num_steps: int) -> StepPlan:
        check_length("feature cache", self.full, num_steps)
        inner = self.denoiser.step_plan(num_steps)
        if inner.features is not None:
            raise ValueError("two feature_cache transforms in one sampler: keep one")
        return inner.replace(features=read_plan(~jnp.asarray(self.full, bool)), feature_branch=self.branch)

    def __call__(self, params, x_t, t, cond=None, *, cache=None, step=None, modes: Modes = COMPUTE, rng=None,
                 train: bool = False) -> tuple[Prediction, Any]:
        return self.denoiser(params, x_t, t, cond, cache=cache, step=step, rng=rng, train=train,
                             modes=modes.replace(feature_branch=self.branch))


KINDS = "uniform:N or nonuniform:N,CENTER[,POW]"


def _parse(text: str) -> dict:
    kind, _, arg = text.partition(":")
    parts = arg.split(",")
    try:
        values = [int(v) for v in parts[:2]] + [float(v) for v in parts[2:]]
    except ValueError:
        values = []
    shapes = (("uniform", 1), ("nonuniform", 2), ("nonuniform", 3))
    if (kind, len(values)) not in shapes or min(values[:2]) < 0 or values[0] < 1 or (
            len(values) == 3 and not (math.isfinite(values[2]) and values[2] > 1)):
        raise ValueError(f"expected {KINDS} (N >= 1, CENTER >= 0 integers; POW > 1, default 1.2)")
    if len(values) == 3 and values[2] == DEFAULT_POW:
        values = values[:2]
    return {"schedule": f"{kind}:{','.join(fmt(v) for v in values)}"}


def _build(denoiser, knobs: dict, ctx):
    branch, branches = knobs["branch"], ctx.caps.feature_branches
    if not -1 <= branch < branches - 1:
        raise ValueError(f"cache_branch {branch} does not exist: this model has "
                         + (f"cache branches -1..{branches - 2}" if branches else "no skip branches to cache")
                         + " (DeepCache's numbering: branch k recomputes k + 1 down blocks)")
    kind, _, arg = knobs["schedule"].partition(":")
    values = [float(v) if i == 2 else int(v) for i, v in enumerate(arg.split(","))]
    full = uniform_full(ctx.steps, *values) if kind == "uniform" else nonuniform_full(ctx.steps, *values)
    return FeatureCache(denoiser, full, branch + 1)


register(TransformPart(
    name="feature_cache", wraps="denoiser", order=20, build=_build,
    help=f"feature caching (DeepCache): {KINDS}, the full UNet every N steps (non-uniform: denser before "
         "step CENTER) and only the shallow path of cache_branch in between",
    knobs=(Knob("schedule", str, examples=("uniform:2", "uniform:3"), help="which steps run the full network"),
           Knob("branch", integer(-1), 0, traced=False, flag="cache_branch",
                help="DeepCache's branch: k recomputes the first k + 1 down blocks and the last k + 2 up blocks "
                     "(its --branch, or 3L+B of its SD pipeline; -1: only the last up block, fastest)")),
    parse=_parse, format=lambda k: k["schedule"],
    tag=lambda k: f"cache-{k['schedule'].replace(':', '').replace(',', '-')}-db{k['branch']}"))
