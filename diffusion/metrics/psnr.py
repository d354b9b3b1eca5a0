"""Peak signal-to-noise ratio between images in ``[-1, 1]`` (peak-to-peak range 2)."""

from __future__ import annotations

import numpy as np


def psnr(images: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``[N]`` PSNR in dB of each image against its reference, both ``[N, ...]`` in
    ``[-1, 1]`` (clipped first): ``10 log10(2^2 / MSE)``; identical images give ``inf``."""
    a = np.clip(np.asarray(images, np.float64), -1.0, 1.0).reshape(len(images), -1)
    b = np.clip(np.asarray(reference, np.float64), -1.0, 1.0).reshape(len(reference), -1)
    if a.shape != b.shape:
        raise ValueError(f"psnr needs images and references of one shape, got {a.shape} and {b.shape}")
    mse = np.mean((a - b) ** 2, axis=1)
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(4.0 / mse)


def mean_psnr(images: np.ndarray, reference: np.ndarray) -> float:
    """Mean over images of the per-image PSNR (dB), identical images capped at 100 dB."""
    return float(np.mean(np.minimum(psnr(images, reference), 100.0)))
