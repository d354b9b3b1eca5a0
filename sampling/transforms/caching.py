"""Reuse across sampling steps as denoiser transforms (docs/design/caching.md).

* :class:`AttentionReuse` — Hunter et al. (arXiv 2401.01008): on a reuse step every
  self-attention layer multiplies its most recently computed map by the current values.
* :class:`FeatureCache` — DeepCache / A-SDM feature inheritance: on a cached step only
  the shallow encoder/decoder path of one skip branch runs, on the deep feature cached
  at the last full step.

Both wrap a denoiser that accepts the UNet's static switches (``Denoiser`` or another
such transform, inside or outside ``Guided``), keep their state in the sampler's cache,
and choose per step with ``lax.cond`` on a **traced** boolean schedule ``[N]``: a new
schedule does not recompile, and XLA executes only the branch taken.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct


def _check_length(name: str, schedule, num_steps: int | None) -> None:
    length = jnp.shape(schedule)[0]
    if num_steps is not None and length != num_steps:
        raise ValueError(f"{name} schedule has {length} entries but sampling takes {num_steps} steps; "
                         f"build it for {num_steps} steps (sampling.transforms.schedules)")


@struct.dataclass
class AttentionReuse:
    """``reuse: bool [N]`` (traced): at step ``i`` with ``reuse[i]``, self-attention
    layers reuse the maps from the last step that computed them; otherwise they compute
    and store them. Step 0 always computes. All-False equals the plain denoiser."""

    denoiser: Any
    reuse: jax.Array

    def init_cache(self, params, x_t, cond=None, num_steps=None, **kwargs):
        _check_length("attention reuse", self.reuse, num_steps)
        return self.denoiser.init_cache(params, x_t, cond, num_steps, attention="store", **kwargs)

    def __call__(self, params, x_t, t, cond=None, *, cache, step, **kwargs):
        call = lambda mode: lambda: self.denoiser(  # noqa: E731
            params, x_t, t, cond, cache=cache, step=step, attention=mode, **kwargs)
        reuse = jnp.asarray(self.reuse)[step] & (step > 0)  # nothing to reuse before step 0
        return jax.lax.cond(reuse, call("reuse"), call("store"))


@struct.dataclass
class FeatureCache:
    """``full: bool [N]`` (traced): a full step runs the whole UNet and caches the deep
    feature entering the shallow decoder path of skip branch ``branch`` (static; 0 is
    the shallowest and cheapest); other steps run only that shallow path on the cached
    feature. Step 0 is always full. All-True equals the plain denoiser."""

    denoiser: Any
    full: jax.Array
    branch: int = struct.field(pytree_node=False, default=0)

    def init_cache(self, params, x_t, cond=None, num_steps=None, **kwargs):
        _check_length("feature cache", self.full, num_steps)
        return self.denoiser.init_cache(params, x_t, cond, num_steps, features="store",
                                        feature_branch=self.branch, **kwargs)

    def __call__(self, params, x_t, t, cond=None, *, cache, step, **kwargs):
        call = lambda mode: lambda: self.denoiser(  # noqa: E731
            params, x_t, t, cond, cache=cache, step=step, features=mode, feature_branch=self.branch, **kwargs)
        full = jnp.asarray(self.full)[step] | (step == 0)  # nothing cached before step 0
        return jax.lax.cond(full, call("store"), call("retrieve"))
