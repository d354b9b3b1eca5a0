"""Denoising losses and weightings; time-shape aware (``t`` of shape ``[B]`` or ``[B, F]``).

All weightings are written as a weight on the x0-space squared error,
``w(logsnr) * |x0_hat - x0|^2`` per element, which makes them comparable:

* ``eps``: eps-MSE, ``|eps_hat - eps|^2 = snr * |x0_hat - x0|^2``;
* ``v``: v-MSE, ``(1 + snr) * |x0_hat - x0|^2``;
* ``x0``: x0-MSE, weight 1;
* ``snr_trunc``: ``max(snr, 1)`` (progressive distillation's truncated SNR).

The loss is averaged over the non-time axes, giving one value per time entry
(``[B]`` or ``[B, F]``), then over those.
"""

from __future__ import annotations

import jax.numpy as jnp

from diffusion.param import Prediction, v_from
from diffusion.schedules import Schedule

WEIGHTINGS = ("eps", "v", "x0", "snr_trunc")


def per_time_mse(err: jnp.ndarray, t_shape: tuple[int, ...]) -> jnp.ndarray:
    """Mean of ``err ** 2`` over the axes after the time axes: ``[*t_shape]``."""
    return jnp.mean(jnp.square(err), axis=tuple(range(len(t_shape), err.ndim)))


def denoising_loss(
    pred: Prediction,
    x0: jnp.ndarray,
    eps: jnp.ndarray,
    t: jnp.ndarray,
    schedule: Schedule,
    weighting: str = "eps",
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Weighted denoising loss.

    Args:
      pred: the denoiser's prediction at ``x_t = alpha x0 + sigma eps``.
      x0, eps: ``[B, ...]`` the clean data and the noise used to make ``x_t``.
      t: ``[B]`` or ``[B, F]`` (any prefix of the data shape).
      schedule: the noise schedule.
      weighting: one of ``WEIGHTINGS``.

    Returns:
      ``(loss, per_t)``: the scalar mean and the per-time-entry loss ``[*t.shape]``.
    """
    alpha, sigma = schedule.alpha_sigma(t)
    if weighting == "eps":
        per_t = per_time_mse(pred.eps - eps, t.shape)
    elif weighting == "v":
        target = v_from(Prediction(x0=x0, eps=eps), alpha, sigma)
        per_t = per_time_mse(v_from(pred, alpha, sigma) - target, t.shape)
    elif weighting in ("x0", "snr_trunc"):
        per_t = per_time_mse(pred.x0 - x0, t.shape)
        if weighting == "snr_trunc":
            per_t = per_t * jnp.maximum(jnp.exp(schedule.logsnr(t)), 1.0)
    else:
        raise ValueError(f"unknown loss weighting {weighting!r}; expected one of {WEIGHTINGS}")
    return jnp.mean(per_t), per_t
