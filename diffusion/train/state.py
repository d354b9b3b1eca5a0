"""The training state pytree shared by diffusion training and every distiller."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct


@struct.dataclass
class TrainState:
    """Everything a run needs to continue exactly where it stopped.

    Attributes:
      step: int32 number of steps taken (skipped non-finite steps included).
      params: the trained parameters.
      ema_params: their exponential moving average (what samplers use).
      opt_state: optimizer state.
      rng: base PRNG key; step ``k`` uses ``fold_in(rng, k)``.
      skipped: int32 total of non-finite updates skipped.
      consecutive_skipped: int32 non-finite updates in a row (reset by a finite one).
      extra: method-specific state (teacher params, distillation round, ...) or None.
    """

    step: jax.Array
    params: Any
    ema_params: Any
    opt_state: Any
    rng: jax.Array
    skipped: jax.Array
    consecutive_skipped: jax.Array
    extra: Any = None


def create_train_state(params: Any, optimizer: optax.GradientTransformation, rng: jax.Array, extra: Any = None) -> TrainState:
    zero = jnp.zeros((), jnp.int32)
    return TrainState(
        step=zero,
        params=params,
        ema_params=jax.tree.map(jnp.copy, params),
        opt_state=optimizer.init(params),
        rng=rng,
        skipped=zero,
        consecutive_skipped=zero,
        extra=extra,
    )
