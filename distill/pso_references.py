"""Offline PSO's references (distill/pso.py): sampled once by the frozen student, or read
from the user's ``.npz``, cached in ``<workdir>/pso_references.npz`` before the first
checkpoint (docs/design/pso.md)."""

from __future__ import annotations

import os
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sampling.grids import make_grid
from sampling.loop import sample
from sampling.solvers.ddim import DDIM

REFERENCES_FILE = "pso_references.npz"  # the offline references of a work directory


def sample_references(student: Any, params: Any, steps: int, num_references: int, seed: int,
                      num_classes: int | None, image_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """``(images [R, *image_shape], labels [R])``: the frozen student's ``steps``-step DDIM
    samples on its trailing grid from ``PRNGKey(seed)``, labels cycling the classes (zeros
    when unconditional)."""
    labels = np.arange(num_references, dtype=np.int32) % (num_classes or 1)
    x_T = jax.random.normal(jax.random.PRNGKey(seed), (num_references, *image_shape))
    cond = {"label": jnp.asarray(labels)} if num_classes is not None else None
    grid = make_grid("trailing", steps, student.schedule)
    images = jax.jit(lambda p, x, c: sample(student, p, DDIM(student.schedule), grid, x, c))(params, x_T, cond)
    return np.asarray(images, np.float32), labels


def read_references(path: str | pathlib.Path, image_shape: tuple[int, ...],
                    num_classes: int | None) -> tuple[np.ndarray, np.ndarray]:
    """``(images, labels)`` of a references ``.npz``, in the cycling order the loss indexes
    (``label + classes * row``); every flaw is a ``ValueError`` naming ``path``."""
    path = pathlib.Path(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: np.asarray(f[k]) for k in ("images", "labels") if k in f.files}
    except FileNotFoundError:
        raise ValueError(f"{path}: no such references file") from None
    except Exception as e:  # noqa: BLE001 - a damaged zip, a pickle, a truncated member
        raise ValueError(f"{path} is not a readable .npz of references ({type(e).__name__}: {e})") from None
    if set(arrays) != {"images", "labels"}:
        raise ValueError(f"{path} lacks {sorted({'images', 'labels'} - set(arrays))}: a references file holds "
                         "images [R, ...] and labels [R]")
    images, labels = arrays["images"], arrays["labels"]
    if images.ndim != len(image_shape) + 1 or tuple(images.shape[1:]) != tuple(image_shape) or not len(images):
        raise ValueError(f"{path} holds images of shape {images.shape}; the model's samples are {tuple(image_shape)}")
    if not (np.issubdtype(images.dtype, np.floating) and np.isfinite(images).all()):
        raise ValueError(f"{path}: the images must be finite floats (got {images.dtype}, or NaN/inf values)")
    classes = num_classes or 1
    if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer) \
            or labels.min() < 0 or labels.max() >= classes:
        raise ValueError(f"{path}: labels must be {len(images)} integers in [0, {classes})")
    counts = np.bincount(labels, minlength=classes)
    if len(set(counts.tolist())) != 1:
        raise ValueError(f"{path}: every class needs the same number of references; counts {counts.tolist()}")
    order = np.stack([np.flatnonzero(labels == c) for c in range(classes)], axis=1).reshape(-1)
    return images[order].astype(np.float32), labels[order].astype(np.int32)


def write_references(path: pathlib.Path, images: np.ndarray, labels: np.ndarray) -> None:
    """Writes the reference cache atomically (process 0); a kill leaves the old file or none."""
    if jax.process_index() == 0:
        tmp = path.with_name(f".{path.stem}.tmp.npz")
        np.savez(tmp, images=images, labels=labels)
        os.replace(tmp, path)


def offline_references(settings, workdir: pathlib.Path, student: Any, params: Any, num_classes: int | None,
                       image_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, bool]:
    """``(images, labels, new)`` of a run in ``workdir``: its cache when it has one (a resume,
    or a run that stopped before its first checkpoint), else ``settings.references``, else
    sampled by the student; ``new``: the cache still has to be written. Checks everything
    before the caller writes anything."""
    cache = pathlib.Path(workdir) / REFERENCES_FILE
    if cache.exists():
        return (*read_references(cache, image_shape, num_classes), False)
    checkpoints = pathlib.Path(workdir) / "checkpoints"
    if checkpoints.is_dir() and any(p.name.isdigit() for p in checkpoints.iterdir()):
        raise ValueError(f"the reference cache {cache} is missing: this run's checkpoints were tuned against it; "
                         "restore it, or start a new work directory")
    if settings.get("references"):
        return (*read_references(settings.references, image_shape, num_classes), True)
    images, labels = sample_references(student, params, settings.steps, settings.num_references,
                                       settings.reference_seed, num_classes, image_shape)
    return images, labels, True
