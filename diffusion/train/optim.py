"""AdamW with linear warmup, an optional cosine decay, and global-norm gradient clipping."""

from __future__ import annotations

import optax

LR_SCHEDULES = ("constant", "cosine", "round_linear")


def learning_rate(lr: float, warmup_steps: int, num_steps: int, schedule: str = "constant",
                  final_fraction: float = 0.05, round_steps: int = 0) -> optax.Schedule:
    """Linear warmup from 0 to ``lr`` over ``warmup_steps``, then ``constant`` or
    ``cosine`` decay to ``final_fraction * lr`` at ``num_steps``; ``round_linear``
    (progressive distillation) restarts at ``lr`` every ``round_steps`` steps and decays
    linearly towards 0 within each round (no warmup)."""
    if schedule == "round_linear":
        if round_steps < 1:
            raise ValueError(f"the round_linear schedule needs round_steps >= 1, got {round_steps}")
        return lambda step: lr * (1.0 - (step % round_steps) / round_steps)
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
                   weight_decay: float = 0.0, grad_clip: float = 1.0, b1: float = 0.9, b2: float = 0.999,
                   round_steps: int = 0) -> optax.GradientTransformation:
    """Global-norm clipping (``grad_clip <= 0`` disables it) followed by AdamW."""
    adamw = optax.adamw(learning_rate(lr, warmup_steps, num_steps, schedule, round_steps=round_steps), b1=b1, b2=b2,
                        weight_decay=weight_decay)
    if grad_clip and grad_clip > 0:
        return optax.chain(optax.clip_by_global_norm(grad_clip), adamw)
    return adamw
