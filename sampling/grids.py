"""Sampling time grids: ``[N + 1]`` decreasing times ending at ``0``.

* ``uniform``: the DDIM paper's uniform skip on the ``T``-step training grid: network
  times ``n = 1, 1 + k, 1 + 2k, ...`` (``k = T // N``), largest first (the released
  TS-DPM / DDIM code's ``range(0, T, k) + 1``); it does not start at pure noise.
* ``leading``: diffusers' DDIM / PNDM "leading" spacing as Stable Diffusion 1.x / 2.x
  configure it (``steps_offset=1``, ``set_alpha_to_one=False``): diffusers timesteps
  ``k = i (T // N) + 1`` are our ``t = (k + 1) / T``, and the last step lands on
  ``alphas_cumprod[0]``, i.e. ``t = 1 / T``, not on ``0`` (the one grid that does not end at 0).
* ``trailing``: ``N`` equal steps from ``t = 1`` (diffusers' "trailing"; starts at pure noise).
* ``quadratic``: the DDIM paper's quadratic spacing ``n_i ~ (i * sqrt(0.8 T) / (N - 1))^2``,
  dense near the data, up to ``0.8 T`` as in its released code (times that would repeat
  near ``t = 0`` are pushed apart by one training step).
* ``logsnr``: uniform in log-SNR from ``t = 1`` to ``t = 1 / T`` (DPM-Solver's choice;
  continuous times, not snapped to the training grid).

The last entry is ``0`` (the final step returns the data prediction), except for
``leading``, which reproduces Stable Diffusion's schedulers.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from diffusion.schedules import Schedule

GRIDS = ("uniform", "leading", "trailing", "quadratic", "logsnr")


def trailing_time(j, n, T: int):
    """Point ``j`` of the ``n``-step trailing grid on a ``T``-step lattice:
    ``round(T (n - j) / n) / T`` (round half to even), for int arrays ``j`` (``0..n``)
    and ``n`` (traced or not). Exact integer arithmetic: the even points of the ``2n``
    grid are the ``n`` grid, which progressive distillation relies on."""
    num = jnp.asarray(T) * (jnp.asarray(n) - jnp.asarray(j))
    q, r = num // n, num % n
    up = (2 * r > n) | ((2 * r == n) & (q % 2 == 1))
    return (q + up.astype(q.dtype)).astype(jnp.float32) / T


def _network_times(kind: str, n: int, schedule: Schedule) -> np.ndarray:
    T = schedule.T  # continuous schedules: the same rule on a 1000-step lattice
    if kind == "uniform":
        k = max(T // n, 1)
        steps = (np.arange(0, T, k)[:n] + 1)[::-1]
        return steps / T
    if kind == "leading":
        return (np.arange(n)[::-1] * (T // n) + 2) / T
    if kind == "trailing":
        return np.asarray(trailing_time(np.arange(n), n, T), np.float64)
    if kind == "quadratic":
        steps = (np.linspace(0, np.sqrt(0.8 * T), n) ** 2).astype(int) + 1
        steps = np.maximum.accumulate(steps - np.arange(n)) + np.arange(n)  # no repeats near t = 0
        return steps[::-1] / T
    if kind == "logsnr":
        hi, lo = float(schedule.logsnr(jnp.asarray(1.0 / T))), float(schedule.logsnr(jnp.asarray(1.0)))
        return np.asarray(schedule.t_from_logsnr(jnp.linspace(lo, hi, n)), np.float64)
    raise ValueError(f"unknown time grid {kind!r}; expected one of {', '.join(GRIDS)}")


def make_grid(kind: str, num_steps: int, schedule: Schedule) -> jnp.ndarray:
    """``[num_steps + 1]`` decreasing times: ``num_steps`` network times, then ``0``.

    Args:
      kind: one of ``GRIDS`` (module docstring).
      num_steps: steps of a first-order solver (= network calls), >= 1.
      schedule: the model's noise schedule.
    """
    if num_steps < 1:
        raise ValueError(f"need at least 1 sampling step, got {num_steps}")
    if schedule.num_steps and num_steps > schedule.num_steps:
        raise ValueError(f"{num_steps} steps exceed the {schedule.num_steps} steps of the training schedule")
    times = _network_times(kind, num_steps, schedule)
    last = 1.0 / schedule.T if kind == "leading" else 0.0
    if times[0] > 1.0:
        raise ValueError(f"the {kind!r} grid with {num_steps} steps starts past t = 1 on a {schedule.T}-step "
                         "schedule (diffusers' steps_offset pushes its first timestep to T); use fewer steps")
    if len(np.unique(times)) != num_steps or np.any(np.diff(times) >= 0) or times[-1] <= last:
        raise ValueError(f"the {kind!r} grid with {num_steps} steps repeats times on a {schedule.num_steps}-step "
                         "schedule; use fewer steps or another grid")
    return jnp.asarray(np.concatenate([times, [last]]), jnp.float32)
