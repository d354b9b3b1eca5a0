"""AdamW with linear warmup, an optional cosine decay, and global-norm gradient clipping."""

from __future__ import annotations

import optax

LR_SCHEDULES = ("constant", "cosine")


def learning_rate(lr: float, warmup_steps: int, num_steps: int, schedule: str = "constant",
                  final_fraction: float = 0.05) -> optax.Schedule:
    """Linear warmup from 0 to ``lr`` over ``warmup_steps``, then ``constant`` or
    ``cosine`` decay to ``final_fraction * lr`` at ``num_steps``."""
    if schedule == "constant":
        return optax.join_schedules(
            [optax.linear_schedule(0.0, lr, max(warmup_steps, 1)), optax.constant_schedule(lr)],
            [max(warmup_steps, 1)],
        )
    if schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, lr, max(warmup_steps, 1), max(num_steps, warmup_steps + 1),
                                                  lr * final_fraction)
    raise ValueError(f"unknown learning-rate schedule {schedule!r}; expected one of {LR_SCHEDULES}")


def make_optimizer(lr: float, warmup_steps: int, num_steps: int, *, schedule: str = "constant",
                   weight_decay: float = 0.0, grad_clip: float = 1.0, b1: float = 0.9, b2: float = 0.999
                   ) -> optax.GradientTransformation:
    """Global-norm clipping (``grad_clip <= 0`` disables it) followed by AdamW."""
    adamw = optax.adamw(learning_rate(lr, warmup_steps, num_steps, schedule), b1=b1, b2=b2,
                        weight_decay=weight_decay)
    if grad_clip and grad_clip > 0:
        return optax.chain(optax.clip_by_global_norm(grad_clip), adamw)
    return adamw
