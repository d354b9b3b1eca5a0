"""Wraps a Flax network once into the pure denoiser every sampler, loss and distiller uses."""

from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

from diffusion.param import Prediction, check_pred_type, to_prediction
from diffusion.schedules import Schedule


@struct.dataclass
class Denoiser:
    """``denoise(params, x_t, t, cond, *, rng=None, train=False) -> Prediction(x0, eps)``.

    A pytree with no leaves (every field is static): passed to ``jax.jit`` as an
    ordinary argument, equal networks, schedules and parameterisations give equal tree
    structures, so re-creating one does not recompile. Transforms (``Guided``) wrap it
    and add traced leaves.

    Attributes:
      module: a network called as ``module.apply({"params": p}, x_t, t, **cond, train=...)``
        that returns a ``pred_type`` prediction with the shape of ``x_t``.
      schedule: the noise schedule the network was trained with.
      pred_type: the network's native output: ``"eps"``, ``"x0"`` or ``"v"``.
    """

    module: nn.Module = struct.field(pytree_node=False)
    schedule: Schedule = struct.field(pytree_node=False)
    pred_type: str = struct.field(pytree_node=False, default="eps")

    def __post_init__(self):
        check_pred_type(self.pred_type)

    def __call__(
        self,
        params: Any,
        x_t: jax.Array,
        t: jax.Array,
        cond: Mapping[str, jax.Array] | None = None,
        *,
        rng: jax.Array | None = None,
        train: bool = False,
    ) -> Prediction:
        """``x_t: [B, ...]``; ``t``: ``[]`` (whole batch) or the model's time shape
        (``[B]`` for images); ``cond``: e.g. ``{"label": [B] int}``."""
        t = jnp.asarray(t, jnp.float32)
        if t.ndim == 0:
            t = jnp.broadcast_to(t, x_t.shape[:1])
        rngs = {"dropout": rng} if rng is not None else {}
        raw = self.module.apply({"params": params}, x_t, t, **(cond or {}), train=train, rngs=rngs)
        alpha, sigma = self.schedule.alpha_sigma(t)
        return to_prediction(raw, self.pred_type, x_t, alpha, sigma)
