"""Image grids as PNG files."""

from __future__ import annotations

import math
import pathlib

import numpy as np
from PIL import Image


def to_uint8(images: np.ndarray) -> np.ndarray:
    """``[N, H, W, C]`` in ``[-1, 1]`` -> uint8 ``[N, H, W, C]`` (clipped, rounded)."""
    return np.round((np.clip(np.asarray(images, np.float32), -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)


def make_grid(images: np.ndarray, nrow: int | None = None, pad: int = 1, scale: int = 1) -> np.ndarray:
    """Tiles ``[N, H, W, C]`` images (``[-1, 1]``) into one uint8 ``[rows*(H+pad)+pad, ..., C]``
    image, ``nrow`` per row (default ``ceil(sqrt(N))``), each pixel repeated ``scale`` times."""
    x = to_uint8(images)
    if scale > 1:
        x = x.repeat(scale, axis=1).repeat(scale, axis=2)
    n, h, w, c = x.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    grid = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, np.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + col * (w + pad): pad + col * (w + pad) + w] = x[i]
    return grid


def save_grid(images: np.ndarray, path: str | pathlib.Path, nrow: int | None = None, scale: int = 1) -> pathlib.Path:
    """Writes :func:`make_grid` as a PNG (parent folders created)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid = make_grid(images, nrow, scale=scale)
    Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(path)
    return path
