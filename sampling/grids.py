"""Sampling time grids: ``[N + 1]`` decreasing times from ``t_max`` to ``0``."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from diffusion.schedules import Schedule

GRIDS = ("uniform",)


def snap_to_training_grid(t: np.ndarray, schedule: Schedule) -> np.ndarray:
    """Rounds times to the ``n / T`` grid of a discrete schedule (no-op for continuous)."""
    if schedule.num_steps:
        return np.round(t * schedule.num_steps) / schedule.num_steps
    return t


def make_grid(kind: str, num_steps: int, schedule: Schedule, t_max: float = 1.0) -> jnp.ndarray:
    """A grid of ``num_steps`` steps: ``[num_steps + 1]`` times, ``grid[0] = t_max``, ``grid[-1] = 0``.

    Args:
      kind: ``uniform`` (equal steps in t; on a discrete schedule, snapped to its steps).
      num_steps: number of denoiser evaluations for a first-order solver (>= 1).
      schedule: the model's noise schedule.
      t_max: the first time (1 = pure noise).
    """
    if num_steps < 1:
        raise ValueError(f"need at least 1 sampling step, got {num_steps}")
    if schedule.num_steps and num_steps > schedule.num_steps:
        raise ValueError(f"{num_steps} steps exceed the {schedule.num_steps} steps of the training schedule")
    if kind == "uniform":
        t = np.linspace(t_max, 0.0, num_steps + 1)
    else:
        raise ValueError(f"unknown time grid {kind!r}; expected one of {GRIDS}")
    return jnp.asarray(snap_to_training_grid(t, schedule), jnp.float32)
