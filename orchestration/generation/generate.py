"""Draws samples from a denoiser in fixed-size batches (one compiled shape)."""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from jax.experimental import multihost_utils

from sampling.loop import sample
from sampling.registry import ModelCaps
from sampling.spec import SamplerSpec
from sampling.transforms.plan import FramePlan


def class_labels(num: int, num_classes: int | None) -> np.ndarray | None:
    """``[num]`` labels cycling ``0..num_classes-1`` (balanced), or None if unconditional."""
    return None if num_classes is None else (np.arange(num) % num_classes).astype(np.int32)


def generate(denoiser: Any, params: Any, image_shape: tuple[int, ...], num: int, spec: SamplerSpec, caps: ModelCaps,
             *, batch_size: int = 500, seed: int = 0, labels: np.ndarray | None = None, progress: bool = False,
             external: Mapping[str, Callable[..., Any]] | None = None, conds: Mapping[str, np.ndarray] | None = None,
             x_T: np.ndarray | None = None, given: tuple[np.ndarray, np.ndarray] | None = None,
             key: jax.Array | None = None, mesh: Any = None) -> np.ndarray:
    """Returns ``[num, *image_shape]`` float32 samples in (about) ``[-1, 1]``.

    Batch ``i`` uses noise and solver keys from ``fold_in(PRNGKey(seed), i)``, so results
    depend only on the arguments (and the batch size). ``labels [num]`` condition a
    class-conditional model; ``conds`` holds any per-sample condition arrays ``[num, ...]``
    (a text model's ``context`` and ``null_context``). ``x_T [num, *image_shape]`` replaces
    the drawn initial noise (to reproduce another sampler's output from its latents).
    Every batch is padded to ``batch_size``. ``external`` holds what parts read from a work
    directory (``orchestration.workdir.phast_files.external_for``). A video plan's given frames come as
    ``given = (mask [num, F] bool, frames [num, F, H, W, C])`` (traced: no recompile per
    batch or per mask). ``key`` replaces ``PRNGKey(seed)`` as the base key. ``mesh`` (a
    ``diffusion.train.sharding`` mesh, every process's devices) splits each batch over all
    its devices (each batch padded to a multiple of them; with jax's partitionable
    threefry the extra rows leave the others' noise unchanged): the samples equal the
    one-device run's for the same arguments, to float rounding.
    """
    if num < 1 or batch_size < 1:
        raise ValueError(f"need num >= 1 and batch_size >= 1 samples, got num={num}, batch_size={batch_size}")
    conds = dict(conds or {})
    if labels is not None:
        conds["label"] = np.asarray(labels, np.int32)
    for name, value in conds.items():
        if len(value) != num:
            raise ValueError(f"condition {name!r} has {len(value)} rows for {num} samples")
    if x_T is not None and tuple(np.shape(x_T)) != (num, *image_shape):
        raise ValueError(f"initial noise x_T has shape {np.shape(x_T)}, expected {(num, *image_shape)}")
    den, solver, grid = spec.build(denoiser, caps, external)
    planned = isinstance(solver, FramePlan)
    if given is not None and not planned:
        raise ValueError("given frames need a video plan (--plan i2v, interp, ...)")
    if planned and given is None and bool(np.asarray(solver.given).any()):
        raise ValueError("this sampler's plan gives frames: sample it through orchestration.generation.video.generate_video with the "
                         "ground-truth videos (launch.sample --source), not with zeros")
    if planned:
        mask, frames = given if given is not None else (
            np.broadcast_to(np.asarray(solver.given), (num, image_shape[0])), np.zeros((num, *image_shape), np.float32))
        if tuple(np.shape(mask)) != (num, image_shape[0]) or tuple(np.shape(frames)) != (num, *image_shape):
            raise ValueError(f"given frames: mask {np.shape(mask)} and frames {np.shape(frames)} do not match "
                             f"{num} videos of shape {image_shape}")
    base = jax.random.PRNGKey(seed) if key is None else key
    batch_size = min(batch_size, num)
    place, rows = (lambda a: a), batch_size  # noqa: E731 - rows: each batch's padded size
    if mesh is not None:
        from diffusion.train.sharding import batch_sharding, place_whole, replicated

        rows = -(-batch_size // mesh.devices.size) * mesh.devices.size
        params = place_whole(params, replicated(mesh))
        place = functools.partial(place_whole, sharding=batch_sharding(mesh))
    out = []
    starts = range(0, num, batch_size)
    pad = lambda a, start, n: jnp.asarray(np.resize(np.asarray(a[start:start + n]), (rows, *np.shape(a)[1:])))  # noqa: E731
    for i, start in enumerate(tqdm.tqdm(starts, desc="sample", disable=not progress, leave=False)):
        n = min(batch_size, num - start)
        k_noise, k_solver = jax.random.split(jax.random.fold_in(base, i))
        if x_T is None:
            x_init = place(jax.random.normal(k_noise, (rows, *image_shape), jnp.float32))
        else:
            x_init = place(pad(np.asarray(x_T, np.float32), start, n))
        cond = {name: place(pad(value, start, n)) for name, value in conds.items()} or None
        batch_solver = solver.replace(given=place(pad(mask, start, n)),
                                      x_given=place(pad(np.asarray(frames, np.float32), start, n))) \
            if planned else solver
        x = sample(den, params, batch_solver, grid, x_init, cond, k_solver)
        if jax.process_count() > 1:
            x = multihost_utils.process_allgather(x, tiled=True)
        out.append(np.asarray(x)[:n])
    return np.concatenate(out)


def all_devices_mesh():
    """A mesh of every device (every process's) to split sampling batches over, or None with
    one device (``launch.sample`` and ``launch.evaluate``)."""
    if jax.device_count() == 1:
        return None
    from diffusion.train.sharding import make_mesh

    return make_mesh(-1, 1)


def cycled_prompts(num: int, prompts: list[str]) -> list[str]:
    """``num`` prompts cycling through ``prompts`` (sample ``i`` gets ``prompts[i % len]``)."""
    if not prompts:
        raise ValueError("no prompts given")
    return [prompts[i % len(prompts)] for i in range(num)]


def check_prompts(run: Any, prompts: list[str] | None) -> None:
    """A text model needs prompts; any other model takes none."""
    if run.caps.text and not prompts:
        raise ValueError(f"{run.workdir} is a text-to-image model: give --prompt \"...\" or --prompts_file")
    if prompts and not run.caps.text:
        raise ValueError(f"{run.workdir} is not a text-conditioned model; --prompt and --prompts_file do not apply")



