"""Draws samples from a denoiser in fixed-size batches (one compiled shape)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from diffusion.nn.denoiser import Denoiser
from sampling.grids import make_grid
from sampling.loop import sample
from sampling.solvers import make_solver


def class_labels(num: int, num_classes: int | None) -> np.ndarray | None:
    """``[num]`` labels cycling ``0..num_classes-1`` (balanced), or None if unconditional."""
    return None if num_classes is None else (np.arange(num) % num_classes).astype(np.int32)


def generate(denoiser: Denoiser, params: Any, image_shape: tuple[int, ...], num: int, *, solver: str = "ddim",
             steps: int = 50, batch_size: int = 500, seed: int = 0, labels: np.ndarray | None = None,
             grid: str = "uniform", **solver_knobs) -> np.ndarray:
    """Returns ``[num, *image_shape]`` float32 samples in (about) ``[-1, 1]``.

    Batch ``i`` uses noise and solver keys from ``fold_in(PRNGKey(seed), i)``, so results
    do not depend on anything but the arguments. ``labels [num]`` condition a
    class-conditional model. Every batch is padded to ``batch_size``.
    """
    solver_obj = make_solver(solver, denoiser.schedule, **solver_knobs)
    time_grid = make_grid(grid, steps, denoiser.schedule)
    batch_size = min(batch_size, num)
    out = []
    for i, start in enumerate(range(0, num, batch_size)):
        n = min(batch_size, num - start)
        k_noise, k_solver = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(seed), i))
        x_T = jax.random.normal(k_noise, (batch_size, *image_shape), jnp.float32)
        cond = None
        if labels is not None:
            cond = {"label": jnp.asarray(np.resize(labels[start:start + n], batch_size), jnp.int32)}
        x = sample(denoiser, params, solver_obj, time_grid, x_T, cond, k_solver)
        if jax.process_count() > 1:
            x = multihost_utils.process_allgather(x, tiled=True)
        out.append(np.asarray(x)[:n])
    return np.concatenate(out)
