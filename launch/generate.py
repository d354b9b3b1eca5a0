"""Draws samples from a denoiser in fixed-size batches (one compiled shape)."""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from jax.experimental import multihost_utils

from sampling.loop import sample
from sampling.registry import ModelCaps
from sampling.spec import SamplerSpec


def class_labels(num: int, num_classes: int | None) -> np.ndarray | None:
    """``[num]`` labels cycling ``0..num_classes-1`` (balanced), or None if unconditional."""
    return None if num_classes is None else (np.arange(num) % num_classes).astype(np.int32)


def generate(denoiser: Any, params: Any, image_shape: tuple[int, ...], num: int, spec: SamplerSpec, caps: ModelCaps,
             *, batch_size: int = 500, seed: int = 0, labels: np.ndarray | None = None, progress: bool = False,
             external: Mapping[str, Callable[..., Any]] | None = None) -> np.ndarray:
    """Returns ``[num, *image_shape]`` float32 samples in (about) ``[-1, 1]``.

    Batch ``i`` uses noise and solver keys from ``fold_in(PRNGKey(seed), i)``, so results
    depend only on the arguments (and the batch size). ``labels [num]`` condition a
    class-conditional model. Every batch is padded to ``batch_size``. ``external`` holds
    what parts read from a work directory (``launch.phast_files.external_for``).
    """
    if num < 1 or batch_size < 1:
        raise ValueError(f"need num >= 1 and batch_size >= 1 samples, got num={num}, batch_size={batch_size}")
    den, solver, grid = spec.build(denoiser, caps, external)
    batch_size = min(batch_size, num)
    out = []
    starts = range(0, num, batch_size)
    for i, start in enumerate(tqdm.tqdm(starts, desc="sample", disable=not progress, leave=False)):
        n = min(batch_size, num - start)
        k_noise, k_solver = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(seed), i))
        x_T = jax.random.normal(k_noise, (batch_size, *image_shape), jnp.float32)
        cond = None
        if labels is not None:
            cond = {"label": jnp.asarray(np.resize(labels[start:start + n], batch_size), jnp.int32)}
        x = sample(den, params, solver, grid, x_T, cond, k_solver)
        if jax.process_count() > 1:
            x = multihost_utils.process_allgather(x, tiled=True)
        out.append(np.asarray(x)[:n])
    return np.concatenate(out)
