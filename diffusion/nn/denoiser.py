"""Wraps a Flax network once into the pure denoiser every sampler, loss and distiller uses."""

from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

from diffusion.param import check_pred_type, to_prediction
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
        cache: Mapping[str, Any] | None = None,
        step: jax.Array | None = None,
        **module_kwargs,
    ):
        """``x_t: [B, ...]``; ``t``: ``[]`` (whole batch) or the model's time shape
        (``[B]`` for images); ``cond``: e.g. ``{"label": [B] int}``.

        Returns a ``Prediction``; with ``cache`` (variable collections from
        :meth:`init_cache`) returns ``(Prediction, updated cache)``. ``module_kwargs``
        are static module switches (``attention="reuse"``, ``features="store"``, ...);
        ``step`` is accepted for the cached-denoiser contract and unused here.
        """
        t = jnp.asarray(t, jnp.float32)
        if t.ndim == 0:
            t = jnp.broadcast_to(t, x_t.shape[:1])
        rngs = {"dropout": rng} if rng is not None else {}
        variables = {"params": params, **(cache or {})}
        kwargs = dict(**(cond or {}), train=train, rngs=rngs, **module_kwargs)
        if cache is None:
            raw, updated = self.module.apply(variables, x_t, t, **kwargs), None
        else:
            raw, updated = self.module.apply(variables, x_t, t, mutable=list(cache), **kwargs)
            updated = {**cache, **updated}
        alpha, sigma = self.schedule.alpha_sigma(t)
        pred = to_prediction(raw, self.pred_type, x_t, alpha, sigma)
        return pred if cache is None else (pred, updated)

    def init_cache(self, params: Any, x_t: jax.Array, cond: Mapping[str, jax.Array] | None = None,
                   num_steps: int | None = None, **module_kwargs) -> dict | None:
        """Zeros shaped like the variables a call with ``module_kwargs`` (store modes)
        writes, e.g. ``{"attention_maps": {...: [B, H, L, L]}}``; None when nothing is
        cached (no switches). Shapes only: no network evaluation."""
        del num_steps  # validated by the transforms that own a schedule
        if not module_kwargs:
            return None
        t = jnp.zeros(x_t.shape[:1], jnp.float32)
        _, written = jax.eval_shape(lambda: self.module.apply(
            {"params": params}, x_t, t, **(cond or {}), mutable=True, **module_kwargs))
        written = {k: v for k, v in written.items() if k != "params"}
        return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), written)
