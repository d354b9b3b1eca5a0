"""eps / x0 / v parameterisations: one function maps any prediction to all of them.

With ``x_t = alpha x0 + sigma eps`` and ``v = alpha eps - sigma x0``:
``x0 = alpha x_t - sigma v`` and ``eps = sigma x_t + alpha v``.
``alpha`` and ``sigma`` have the time shape (``[]``, ``[B]``, ``[B, F]``, ...) and are
right-broadcast against ``x_t``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp

from diffusion.schedules import bcast_right

PRED_TYPES = ("eps", "x0", "v")


class Prediction(NamedTuple):
    """A denoiser's output in normalised form; both fields have the shape of ``x_t``."""

    x0: jnp.ndarray
    eps: jnp.ndarray


def check_pred_type(pred_type: str) -> str:
    if pred_type not in PRED_TYPES:
        raise ValueError(f"unknown prediction type {pred_type!r}; expected one of {PRED_TYPES}")
    return pred_type


def to_prediction(raw, pred_type: str, x_t, alpha, sigma, *, min_sigma: float = 1e-4) -> Prediction:
    """Converts a network output of type ``pred_type`` into ``Prediction(x0, eps)``.

    Args:
      raw: ``[B, ...]`` network output.
      pred_type: ``"eps"``, ``"x0"`` or ``"v"``.
      x_t: ``[B, ...]`` noisy input.
      alpha, sigma: time-shaped schedule values (right-broadcast to ``x_t``).
      min_sigma / alpha floor: avoids dividing by ``0`` at ``t = 0`` (eps models) or
        ``t = 1`` (x0 models with ``alpha = 0``).
    """
    a, s = bcast_right(alpha, x_t), bcast_right(sigma, x_t)
    check_pred_type(pred_type)
    if pred_type == "eps":
        return Prediction(x0=(x_t - s * raw) / jnp.maximum(a, min_sigma), eps=raw)
    if pred_type == "x0":
        return Prediction(x0=raw, eps=(x_t - a * raw) / jnp.maximum(s, min_sigma))
    return Prediction(x0=a * x_t - s * raw, eps=s * x_t + a * raw)


def v_from(pred: Prediction, alpha, sigma) -> jnp.ndarray:
    """``v = alpha eps - sigma x0`` of a prediction."""
    a, s = bcast_right(alpha, pred.x0), bcast_right(sigma, pred.x0)
    return a * pred.eps - s * pred.x0


def from_prediction(pred: Prediction, pred_type: str, alpha, sigma) -> jnp.ndarray:
    """The ``pred_type`` view of a prediction (inverse of :func:`to_prediction`)."""
    check_pred_type(pred_type)
    if pred_type == "eps":
        return pred.eps
    if pred_type == "x0":
        return pred.x0
    return v_from(pred, alpha, sigma)


def x_t_from(pred: Prediction, alpha, sigma) -> jnp.ndarray:
    """Re-noises a prediction: ``alpha x0 + sigma eps`` (DDIM's deterministic update)."""
    a, s = bcast_right(alpha, pred.x0), bcast_right(sigma, pred.x0)
    return a * pred.x0 + s * pred.eps
