"""Feature caching across sampling steps (DeepCache / A-SDM feature inheritance) as a
denoiser transform, registered as the ``feature_cache`` part.

On a cached step only the shallow encoder/decoder path of one skip branch runs, on the
deep feature cached at the last full step. The step picks full or cached with
``lax.cond`` on a **traced** boolean schedule ``[N]`` (docs/design/caching.md).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from diffusion.contract import COMPUTE, Modes
from diffusion.param import Prediction
from sampling.registry import Knob, TransformPart, integer, register
from sampling.transforms.schedules import check_length, nonuniform_full, uniform_full


@struct.dataclass
class FeatureCache:
    """``full: bool [N]`` (traced): a full step runs the whole UNet and caches the deep
    feature entering the shallow decoder path of skip branch ``branch`` (static; 0 is
    the shallowest and cheapest); other steps run only that shallow path on the cached
    feature. Step 0 is always full. All-True equals the plain denoiser."""

    denoiser: Any
    full: jax.Array
    branch: int = struct.field(pytree_node=False, default=0)

    def init_cache(self, params, x_t, cond=None, num_steps=None, modes: Modes = COMPUTE):
        check_length("feature cache", self.full, num_steps)
        return self.denoiser.init_cache(params, x_t, cond, num_steps,
                                        modes.replace(features="store", feature_branch=self.branch))

    def __call__(self, params, x_t, t, cond=None, *, cache=None, step=None, modes: Modes = COMPUTE, rng=None,
                 train: bool = False) -> tuple[Prediction, Any]:
        if step is None:
            raise ValueError("feature caching needs the sampler's step index: sample with sampling.loop.sample")
        call = lambda mode: lambda: self.denoiser(  # noqa: E731
            params, x_t, t, cond, cache=cache, step=step, rng=rng, train=train,
            modes=modes.replace(features=mode, feature_branch=self.branch))
        full = jnp.asarray(self.full)[step] | (step == 0)  # nothing cached before step 0
        return jax.lax.cond(full, call("store"), call("retrieve"))


KINDS = "uniform:N or nonuniform:N,CENTER"


def _parse(text: str) -> dict:
    kind, _, arg = text.partition(":")
    try:
        values = [int(v) for v in arg.split(",")]
    except ValueError:
        values = []
    if (kind, len(values)) not in (("uniform", 1), ("nonuniform", 2)) or min(values) < 0 or values[0] < 1:
        raise ValueError(f"expected {KINDS} (N >= 1, CENTER >= 0, integers)")
    return {"schedule": f"{kind}:{','.join(map(str, values))}"}


def _build(denoiser, knobs: dict, ctx):
    branch, branches = knobs["branch"], ctx.caps.feature_branches
    if not branch < branches:
        raise ValueError(f"cache_branch {branch} does not exist: this model has "
                         + (f"skip branches 0..{branches - 1}" if branches else "no skip branches to cache"))
    kind, _, arg = knobs["schedule"].partition(":")
    values = [int(v) for v in arg.split(",")]
    full = uniform_full(ctx.steps, *values) if kind == "uniform" else nonuniform_full(ctx.steps, *values)
    return FeatureCache(denoiser, full, branch)


register(TransformPart(
    name="feature_cache", wraps="denoiser", order=20, build=_build,
    help=f"feature caching (DeepCache): {KINDS}, the full UNet every N steps and only the shallow path of "
         "skip branch cache_branch in between",
    knobs=(Knob("schedule", str, examples=("uniform:2", "uniform:3"), help="which steps run the full network"),
           Knob("branch", integer(0), 0, traced=False, flag="cache_branch",
                help="skip branch of the feature cache (0 = shallowest, fastest)")),
    parse=_parse, format=lambda k: k["schedule"],
    tag=lambda k: f"cache-{k['schedule'].replace(':', '').replace(',', '-')}-b{k['branch']}"))
