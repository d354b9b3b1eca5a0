"""eps / x0 / v parameterisations: one function maps any prediction to all of them.

With ``x_t = alpha x0 + sigma eps`` and ``v = alpha eps - sigma x0``:
``x0 = alpha x_t - sigma v`` and ``eps = sigma x_t + alpha v``. The forward process
(:func:`forward_noise`) and the deterministic DDIM re-noising (:func:`ddim_renoise`) are
written here once, for the objective, the distillers and the solvers.
``alpha`` and ``sigma`` have the time shape (``[]``, ``[B]``, ``[B, F]``, ...) and are
right-broadcast against ``x_t``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp

from diffusion.schedules import bcast_right

PRED_TYPES = ("eps", "x0", "v")
MIN_SCALE = 1e-4  # alpha / sigma floor when dividing (t = 0 for eps models, t = 1 for x0 models)


class Prediction(NamedTuple):
    """A denoiser's output in normalised form; both fields have the shape of ``x_t``."""

    x0: jnp.ndarray
    eps: jnp.ndarray


def check_pred_type(pred_type: str) -> str:
    if pred_type not in PRED_TYPES:
        raise ValueError(f"unknown prediction type {pred_type!r}; expected one of {PRED_TYPES}")
    return pred_type


def to_prediction(raw, pred_type: str, x_t, alpha, sigma) -> Prediction:
    """Converts a network output of type ``pred_type`` into ``Prediction(x0, eps)``.

    Args:
      raw: ``[B, ...]`` network output.
      pred_type: ``"eps"``, ``"x0"`` or ``"v"``.
      x_t: ``[B, ...]`` noisy input.
      alpha, sigma: time-shaped schedule values (right-broadcast to ``x_t``); divisions
        floor them at ``MIN_SCALE``.
    """
    a, s = bcast_right(alpha, x_t), bcast_right(sigma, x_t)
    check_pred_type(pred_type)
    if pred_type == "eps":
        return Prediction(x0=(x_t - s * raw) / jnp.maximum(a, MIN_SCALE), eps=raw)
    if pred_type == "x0":
        return Prediction(x0=raw, eps=(x_t - a * raw) / jnp.maximum(s, MIN_SCALE))
    return Prediction(x0=a * x_t - s * raw, eps=s * x_t + a * raw)


def v_from(pred: Prediction, alpha, sigma) -> jnp.ndarray:
    """``v = alpha eps - sigma x0`` of a prediction."""
    a, s = bcast_right(alpha, pred.x0), bcast_right(sigma, pred.x0)
    return a * pred.eps - s * pred.x0


def ddim_renoise(pred: Prediction, alpha_s, sigma_s) -> jnp.ndarray:
    """The deterministic DDIM step to time ``s``: ``alpha_s x0 + sigma_s eps`` (``[B, ...]``;
    ``alpha_s, sigma_s`` have the time shape). The one place this re-noising is written."""
    a, s = bcast_right(alpha_s, pred.x0), bcast_right(sigma_s, pred.x0)
    return a * pred.x0 + s * pred.eps


def forward_noise(schedule, x0: jnp.ndarray, eps: jnp.ndarray, t) -> jnp.ndarray:
    """The forward process ``x_t = alpha(t) x0 + sigma(t) eps`` of ``schedule`` at ``t``
    (``[B]``, ``[B, F]``, ...; right-broadcast against ``x0, eps: [B, ...]``)."""
    return ddim_renoise(Prediction(x0=x0, eps=eps), *schedule.alpha_sigma(t))
