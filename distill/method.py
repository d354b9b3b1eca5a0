"""What a distillation method hands the shared training loop."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax

from diffusion.param import Prediction
from diffusion.schedules import bcast_right
from diffusion.train.state import TrainState
from diffusion.train.step import LossFn


@dataclasses.dataclass(frozen=True)
class Method:
    """A distiller.

    Attributes:
      loss_fn: ``(params, batch, rng, state) -> (loss, aux)`` for ``make_train_step``.
      init_extra: ``(student_params, teacher_params) -> extra``, the initial
        ``TrainState.extra`` (called under ``jit`` when the state is created).
      after_update: ``state -> state`` after every optimizer step (or None).
    """

    loss_fn: LossFn
    init_extra: Callable[[Any, Any], Any]
    after_update: Callable[[TrainState], TrainState] | None = None


def ddim_step(pred: Prediction, alpha_s: jax.Array, sigma_s: jax.Array) -> jax.Array:
    """The deterministic DDIM step to time ``s``: ``alpha_s x0 + sigma_s eps`` (``[B, ...]``;
    ``alpha_s, sigma_s`` have the time shape)."""
    return bcast_right(alpha_s, pred.x0) * pred.x0 + bcast_right(sigma_s, pred.eps) * pred.eps
