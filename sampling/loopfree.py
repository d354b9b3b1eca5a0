"""TiUE's loop-free sampling (docs/design/tiue.md): one encoder call on ``x_T`` at the
first grid time, one decoder call batched over the ``K`` grid times, and ``K`` elementwise
DDIM updates (eta 0) chaining the ``K`` predictions. Differentiable: TiUE's training runs
it, and its KL regulariser reads the ``K`` noise maps. Any grid: TiUE's reference runs
diffusers' ``leading`` one (``[751, 501, 251, 1]`` at K = 4, ending at ``t = 1 / T``), on
which an eps network's chain equals ``DDIMScheduler.step`` over those timesteps."""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp

from sampling.solvers.ddim import ddim_update


def check_split(denoiser: Any) -> None:
    """Loop-free sampling needs a denoiser with the encode/decode split (a UNet's)."""
    module = getattr(denoiser, "module", None)
    if not (hasattr(denoiser, "decode_raw") and hasattr(module, "encode") and hasattr(module, "decode")):
        raise ValueError(f"loop-free sampling needs a UNet denoiser with the encode/decode split; "
                         f"got {type(denoiser).__name__}")


def loopfree_predictions(denoiser: Any, params: Any, times: jax.Array, x_T: jax.Array,
                         cond: Mapping[str, jax.Array] | None = None) -> jax.Array:
    """``[K, B, ...]`` raw network outputs: the decoder at each of ``times [K]`` on the
    encoder's features of ``x_T [B, ...]`` at ``times[0]``, in one ``K * B`` batch."""
    b, k = x_T.shape[0], times.shape[0]
    cond = dict(cond or {})
    features = denoiser.encode(params, x_T, times[0], cond)
    raw = denoiser.decode_raw(params, tile_steps(features, k, b), jnp.repeat(times, b), tile_steps(cond, k, b))
    return raw.reshape(k, b, *raw.shape[1:])


def tile_steps(tree: Any, k: int, b: int) -> Any:
    """Every ``[B, ...]`` leaf of ``tree`` repeated for ``k`` steps, step-major ``[K * B, ...]``
    (other leaves, e.g. scalars, as they are): the decoder's batch."""
    def tile(a):
        a = jnp.asarray(a)
        if a.ndim == 0 or a.shape[0] != b:
            return a
        return jnp.broadcast_to(a[None], (k, *a.shape)).reshape(k * b, *a.shape[1:])

    return jax.tree.map(tile, tree)


def ddim_chain(denoiser: Any, raw: jax.Array, grid: jax.Array, x_T: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(x [B, ...] at grid[K], eps [K, B, ...])``: DDIM (eta 0) from ``x_T`` at ``grid[0]``
    over ``grid [K + 1]``, step ``k`` reading ``raw[k]`` at the chained ``x_k``. For an eps
    network ``eps[k]`` is ``raw[k]`` itself; for a v network it is ``sigma_k x_k + alpha_k raw[k]``."""
    def body(x, k):
        pred = denoiser.prediction(raw[k], x, grid[k])
        alpha_t, sigma_t = denoiser.schedule.alpha_sigma(grid[k])
        alpha_s, sigma_s = denoiser.schedule.alpha_sigma(grid[k + 1])
        return ddim_update(pred.x0, pred.eps, alpha_s, sigma_s, alpha_t, sigma_t, 0.0, jnp.zeros_like(x)), pred.eps

    return jax.lax.scan(body, x_T, jnp.arange(raw.shape[0]))


def loopfree_chain(denoiser: Any, params: Any, grid: jax.Array, x_T: jax.Array,
                   cond: Mapping[str, jax.Array] | None = None) -> tuple[jax.Array, jax.Array]:
    """TiUE's student: ``(x [B, ...] at grid[K], eps [K, B, ...])`` for ``grid [K + 1]`` (the
    last 0, or ``1 / T`` on the leading grid: diffusers' ``final_alpha_cumprod``)."""
    check_split(denoiser)
    return ddim_chain(denoiser, loopfree_predictions(denoiser, params, grid[:-1], x_T, cond), grid, x_T)
