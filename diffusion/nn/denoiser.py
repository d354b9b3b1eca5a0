"""Wraps a Flax network once into the pure denoiser every sampler, loss and distiller uses."""

from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

from diffusion.contract import COMPUTE, Modes, StepPlan
from diffusion.param import Prediction, check_pred_type, to_prediction
from diffusion.schedules import Schedule


def network_cond(cond: Mapping[str, jax.Array] | None) -> dict:
    """The condition inputs the network takes (all but guidance's ``null_*`` conditions)."""
    return {k: v for k, v in (cond or {}).items() if not k.startswith("null_")}


@struct.dataclass
class Denoiser:
    """The network as a denoiser (``diffusion.contract``): ``(Prediction(x0, eps), cache)``.

    A pytree with no leaves (every field is static): passed to ``jax.jit`` as an
    ordinary argument, equal networks, schedules and parameterisations give equal tree
    structures, so re-creating one does not recompile. Transforms (``Guided``) wrap it
    and add traced leaves.

    Attributes:
      module: a network called as ``module.apply({"params": p}, x_t, t, **cond, train=..., modes=...)``
        that returns a ``pred_type`` prediction with the shape of ``x_t``.
      schedule: the noise schedule the network was trained with.
      pred_type: the network's native output: ``"eps"``, ``"x0"`` or ``"v"``.
    """

    module: nn.Module = struct.field(pytree_node=False)
    schedule: Schedule = struct.field(pytree_node=False)
    pred_type: str = struct.field(pytree_node=False, default="eps")

    def __post_init__(self):
        check_pred_type(self.pred_type)

    def __call__(self, params: Any, x_t: jax.Array, t: jax.Array, cond: Mapping[str, jax.Array] | None = None, *,
                 cache: Mapping[str, Any] | None = None, step: jax.Array | None = None, modes: Modes = COMPUTE,
                 rng: jax.Array | None = None, train: bool = False) -> tuple[Prediction, dict]:
        """``x_t: [B, ...]``; ``t``: ``[]`` (whole batch) or the model's time shape
        (``[B]`` for images); ``cond``: e.g. ``{"label": [B] int}``; ``cache``: the
        variable collections of :meth:`init_cache` (``{}``/None: nothing cached);
        ``step`` is unused here (per-step schedules of transforms read it).
        ``cond["null_context"]`` and any ``null_*`` (guidance's null conditions) are dropped:
        the network never sees it.

        Returns ``(Prediction, cache)`` with the collections this call wrote.
        """
        del step
        t = jnp.asarray(t, jnp.float32)
        if t.ndim == 0:
            t = jnp.broadcast_to(t, x_t.shape[:1])
        cache = dict(cache or {})
        kwargs = dict(**network_cond(cond), train=train, rngs={"dropout": rng} if rng is not None else {}, modes=modes)
        told = self.schedule.network_time(t)
        if cache:
            raw, written = self.module.apply({"params": params, **cache}, x_t, told, mutable=list(cache), **kwargs)
            cache = {**cache, **written}
        else:
            raw = self.module.apply({"params": params}, x_t, told, **kwargs)
        alpha, sigma = self.schedule.alpha_sigma(t)
        return to_prediction(raw, self.pred_type, x_t, alpha, sigma), cache

    def encode(self, params: Any, x_t: jax.Array, t: jax.Array, cond: Mapping[str, jax.Array] | None = None):
        """TiUE's encoder half of the network (docs/design/tiue.md): ``EncoderFeatures``."""
        t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), x_t.shape[:1])
        return self.module.apply({"params": params}, x_t, self.schedule.network_time(t), **network_cond(cond),
                                 method="encode")

    def decode_raw(self, params: Any, features: Any, t: jax.Array, cond: Mapping[str, jax.Array] | None = None
                   ) -> jax.Array:
        """The decoder half on ``features`` with the time embedding of ``t [B]``: the
        network's raw ``pred_type`` output ``[B, ...]`` (:meth:`prediction` reads it)."""
        t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (features.batch,))
        return self.module.apply({"params": params}, features, self.schedule.network_time(t), **network_cond(cond),
                                 method="decode")

    def prediction(self, raw: jax.Array, x_t: jax.Array, t: jax.Array) -> Prediction:
        """A raw network output at ``(x_t, t)`` as a :class:`Prediction`."""
        alpha, sigma = self.schedule.alpha_sigma(jnp.asarray(t, jnp.float32))
        return to_prediction(raw, self.pred_type, x_t, alpha, sigma)

    def step_plan(self, num_steps: int) -> StepPlan:
        """Plain steps: the network caches nothing unless a transform asks it to."""
        del num_steps
        return StepPlan()

    def init_cache(self, params: Any, x_t: jax.Array, cond: Mapping[str, jax.Array] | None = None,
                   num_steps: int | None = None, modes: Modes = COMPUTE) -> dict:
        """Zeros shaped like the variables a call in ``modes`` (store modes) writes, e.g.
        ``{"attention_maps": {...: [B, H, L, L]}}``; ``{}`` when nothing is cached.
        Shapes only: no network evaluation."""
        del num_steps  # validated by the transforms that own a schedule
        if modes == COMPUTE:
            return {}
        t = jnp.zeros(x_t.shape[:1], jnp.float32)
        _, written = jax.eval_shape(lambda: self.module.apply(
            {"params": params}, x_t, t, **network_cond(cond), mutable=True, modes=modes))
        written = {k: v for k, v in written.items() if k != "params"}
        return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), written)
