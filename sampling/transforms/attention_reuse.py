"""Attention-map reuse across sampling steps (Hunter et al., arXiv 2401.01008) as a
denoiser transform, registered as the ``attention_reuse`` part.

On a reuse step every self-attention layer multiplies its most recently computed map by
the current values. The **traced** boolean schedule ``[N]`` becomes the attention codes of
the step plan (``diffusion.contract.read_plan``): the sampling loop runs each step's
variant and keeps the maps of a store step, the last computing step before a reuse run,
out of the per-step carry (docs/design/caching.md). A new schedule does not recompile.
"""

from __future__ import annotations

from typing import Any

import jax
from flax import struct

from diffusion.contract import COMPUTE, Modes, StepPlan, read_plan
from diffusion.param import Prediction
from sampling.registry import Knob, TransformPart, register
from sampling.transforms.schedules import check_length, hurry, reuse_block, reuse_steps


@struct.dataclass
class AttentionReuse:
    """``reuse: bool [N]`` (traced): at step ``i`` with ``reuse[i]``, self-attention
    layers reuse the maps from the last step that computed them; otherwise they compute
    (and store them when the next step reuses). Step 0 always computes. All-False equals
    the plain denoiser. A call runs the attention mode it is given (the loop's plan)."""

    denoiser: Any
    reuse: jax.Array

    def init_cache(self, params, x_t, cond=None, num_steps=None, modes: Modes = COMPUTE):
        check_length("attention reuse", self.reuse, num_steps)
        return self.denoiser.init_cache(params, x_t, cond, num_steps, modes.replace(attention="store"))

    def step_plan(self, num_steps: int) -> StepPlan:
        check_length("attention reuse", self.reuse, num_steps)
        inner = self.denoiser.step_plan(num_steps)
        if inner.attention is not None:
            raise ValueError("two attention_reuse transforms in one sampler: keep one")
        return inner.replace(attention=read_plan(self.reuse))

    def __call__(self, params, x_t, t, cond=None, *, cache=None, step=None, modes: Modes = COMPUTE, rng=None,
                 train: bool = False) -> tuple[Prediction, Any]:
        return self.denoiser(params, x_t, t, cond, cache=cache, step=step, modes=modes, rng=rng, train=train)


KINDS = "hurry:K, phast:K, steps:I,J,... or block:K,START"


def _ints(text: str, count: int | None = None) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if count is not None and len(values) != count:
        raise ValueError(f"expected {count} integer(s), got {text!r}")
    return values


def _parse(text: str) -> dict:
    """The schedule spec in canonical form (``steps:`` sorted, duplicates dropped)."""
    kind, _, arg = text.partition(":")
    try:
        if kind in ("hurry", "phast"):
            (k,) = _ints(arg, 1)
            if k < 0:
                raise ValueError(f"K must be >= 0, got {k}")
            return {"schedule": f"{kind}:{k}"}
        if kind == "steps":
            return {"schedule": "steps:" + ",".join(str(s) for s in sorted(set(_ints(arg))))}
        if kind == "block":
            k, start = _ints(arg, 2)
            return {"schedule": f"block:{k},{start}"}
    except ValueError as e:
        if "invalid literal" not in str(e):
            raise
    raise ValueError(f"expected {KINDS} (integers)")


def schedule_of(spec: str, steps: int, external) -> jax.Array:
    """``bool [steps]`` of a canonical schedule spec; ``phast:K`` asks ``external["phast"](K)``."""
    kind, _, arg = spec.partition(":")
    values = _ints(arg)
    if kind == "hurry":
        return hurry(steps, values[0])
    if kind == "steps":
        return reuse_steps(steps, values)
    if kind == "block":
        return reuse_block(steps, *values)
    if "phast" not in external:
        raise ValueError(f"attention_reuse {spec!r} reads a schedule searched by `python -m launch.phast`: "
                         "sample through launch.sample / launch.evaluate, which read it from the work directory")
    return external["phast"](values[0])


def _build(denoiser, knobs: dict, ctx):
    if not ctx.caps.self_attention:
        raise ValueError("attention_reuse needs a network with self-attention layers; this model has none")
    return AttentionReuse(denoiser, schedule_of(knobs["schedule"], ctx.steps, ctx.external))


register(TransformPart(
    name="attention_reuse", wraps="denoiser", order=10, build=_build,
    help=f"attention-map reuse: {KINDS} (phast:K reads the schedule that launch.phast searched)",
    knobs=(Knob("schedule", str, examples=("hurry:1", "steps:1"), help="which steps reuse the maps"),),
    parse=_parse, format=lambda k: k["schedule"],
    tag=lambda k: "reuse-" + k["schedule"].replace(":", "").replace(",", "-")))
