"""Classifier-free guidance as a transform of the denoiser (Ho & Salimans 2022), and the
guidance input of a w-conditioned student; registered as the ``guidance`` part."""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import struct

from diffusion.contract import COMPUTE, Modes
from diffusion.param import Prediction
from sampling.registry import Knob, TransformPart, fmt, number, register


@struct.dataclass
class Guided:
    """``x0 = x0_u + scale (x0_c - x0_u)`` and likewise ``eps``, from one batched call.

    The conditional and unconditional branches run as one ``[2B]`` batch; the
    unconditional branch gets the null label (class-conditional models) or, for a text
    model, ``cond["null_context"]`` (the negative or empty prompt's context) as its context, and
    any other input ``k`` its ``cond["null_k"]`` where given (SDXL's pooled embedding and sizes);
    the same affine combination of x0 and eps keeps ``x_t = alpha x0 + sigma eps``.
    ``scale = 1`` is the conditional model, ``0`` the unconditional one. ``scale`` is a
    traced leaf: sweeping it does not recompile. The cache covers the ``[2B]`` batch, so
    each branch keeps its own maps and features.

    Attributes:
      denoiser: the wrapped denoiser (static structure).
      scale: guidance scale ``w`` (scalar or ``[B]``).
      null_label: the unconditional label (the UNet's ``num_classes``); unused by text models.
    """

    denoiser: Any
    scale: jax.Array | float
    null_label: int = struct.field(pytree_node=False, default=10)

    def __call__(self, params, x_t, t, cond: Mapping[str, jax.Array] | None = None, *, cache=None, step=None,
                 modes: Modes = COMPUTE, rng=None, train: bool = False) -> tuple[Prediction, Any]:
        b = x_t.shape[0]
        t = jnp.asarray(t)
        both_t = jnp.concatenate([t, t]) if t.ndim else t
        both, cache = self.denoiser(params, jnp.concatenate([x_t, x_t]), both_t, self._both(cond), cache=cache,
                                    step=step, modes=modes, rng=rng, train=train)
        w = jnp.reshape(jnp.asarray(self.scale, x_t.dtype), jnp.shape(self.scale) + (1,) * (x_t.ndim - jnp.ndim(self.scale)))
        mix = lambda y: y[b:] + w * (y[:b] - y[b:])  # noqa: E731
        return Prediction(x0=mix(both.x0), eps=mix(both.eps)), cache

    def _both(self, cond):
        """The ``[2B]`` condition: each input ``k`` followed by its ``null_k`` where the batch has one
        (a text model's ``null_context``; SDXL's ``null_text_embeds`` and ``null_time_ids``), repeated
        otherwise; a class-conditional model's labels followed by the null label."""
        cond = dict(cond or {})
        nulls = {k[len("null_"):]: cond.pop(k) for k in list(cond) if k.startswith("null_")}
        orphans = sorted(set(nulls) - set(cond))
        if orphans:
            raise ValueError(f"guidance got null conditions for inputs the batch does not have: {orphans}")
        if "context" in cond and "context" not in nulls:
            raise ValueError("classifier-free guidance of a text model needs cond['null_context'] (the context "
                             "of the negative or empty prompt)")
        if "context" not in cond and "label" not in cond:
            raise ValueError("classifier-free guidance needs cond['label'] (a class-conditional model) or "
                             "cond['context'] and cond['null_context'] (a text model)")
        both = {k: jnp.concatenate([v, nulls.get(k, v)]) for k, v in cond.items()}  # e.g. a [B] guidance scale
        if "context" not in cond:
            both["label"] = jnp.concatenate([cond["label"], jnp.full_like(cond["label"], self.null_label)])
        return both

    def init_cache(self, params, x_t, cond=None, num_steps=None, modes: Modes = COMPUTE):
        """The inner denoiser's cache for the doubled ``[2B]`` batch."""
        return self.denoiser.init_cache(params, jnp.concatenate([x_t, x_t]), self._both(cond), num_steps, modes)

    def step_plan(self, num_steps: int):
        return self.denoiser.step_plan(num_steps)


@struct.dataclass
class GuidanceInput:
    """Guidance for a **w-conditioned** network (a guided-distillation student): one call
    with ``cond["guidance"] = scale`` broadcast to ``[B]``, no unconditional branch.
    ``scale`` is traced, like :class:`Guided`'s."""

    denoiser: Any
    scale: jax.Array | float

    def __call__(self, params, x_t, t, cond: Mapping[str, jax.Array] | None = None, *, cache=None, step=None,
                 modes: Modes = COMPUTE, rng=None, train: bool = False) -> tuple[Prediction, Any]:
        return self.denoiser(params, x_t, t, self._with_scale(cond, x_t), cache=cache, step=step, modes=modes,
                             rng=rng, train=train)

    def _with_scale(self, cond, x_t):
        return {**(cond or {}), "guidance": jnp.broadcast_to(jnp.asarray(self.scale, jnp.float32), x_t.shape[:1])}

    def init_cache(self, params, x_t, cond=None, num_steps=None, modes: Modes = COMPUTE):
        return self.denoiser.init_cache(params, x_t, self._with_scale(cond, x_t), num_steps, modes)

    def step_plan(self, num_steps: int):
        return self.denoiser.step_plan(num_steps)


def _build(denoiser, knobs: dict, ctx):
    if ctx.caps.w_conditioned:
        return GuidanceInput(denoiser, knobs["w"])
    if ctx.caps.text:
        return Guided(denoiser, knobs["w"], null_label=-1)
    if ctx.caps.null_label is None:
        raise ValueError("guidance needs a class-conditional or text model (or a w-conditioned student); this one "
                         "has neither labels nor text")
    return Guided(denoiser, knobs["w"], null_label=ctx.caps.null_label)


register(TransformPart(
    name="guidance", wraps="denoiser", order=90, build=_build,
    help="classifier-free guidance scale W (1: the plain conditional model, 0: the unconditional one; for a "
         "w-conditioned student the w it is given)",
    knobs=(Knob("w", number(), examples=(1.5, 3.0), help="guidance scale"),),
    tag=lambda k: f"w{fmt(k['w'])}",
    implicit=lambda caps: {"w": 1.0} if caps.w_conditioned else None))
