"""``launch.sample --initial_noise FILE.npy``: a user's starting noise, checked before anything runs.

The file holds standard-normal noise ``[N, H, W, C]`` (channels last): what diffusers takes as
``latents=`` before its scheduler's ``init_noise_sigma`` scaling, transposed from its
``[N, C, H, W]`` (``np.transpose(latents, (0, 2, 3, 1))``). Sampling from it reproduces the
image diffusers gives for the same prompt, steps, guidance and scheduler.
"""

from __future__ import annotations

import hashlib
import pathlib

import numpy as np


def read_initial_noise(path: str | pathlib.Path, sample_shape: tuple[int, ...], num: int | None) -> np.ndarray:
    """``[N, *sample_shape]`` float32 noise from ``path``; ``num`` (None: the file's ``N``) must be its ``N``.

    Raises:
      ValueError: a missing, unreadable or pickled file, a non-numeric, non-finite or mis-shaped array
        (diffusers' channels-first layout is named with the transpose that fixes it), or a count that
        is not ``num``.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise ValueError(f"--initial_noise {path} is not a file (give a .npy of noise [N, H, W, C])")
    try:
        noise = np.load(path, allow_pickle=False)
    except (ValueError, EOFError, OSError) as e:
        raise ValueError(f"--initial_noise {path} is not a readable .npy array ({type(e).__name__}: {e}); write "
                         "it with np.save") from None
    if not isinstance(noise, np.ndarray) or not np.issubdtype(noise.dtype, np.number) or \
            np.issubdtype(noise.dtype, np.complexfloating):
        raise ValueError(f"--initial_noise {path} holds {getattr(noise, 'dtype', type(noise))}, not real numbers")
    shape = tuple(sample_shape)
    if noise.ndim == len(shape) + 1 and noise.shape[1:] != shape and len(shape) == 3 and \
            (noise.shape[1], noise.shape[2], noise.shape[3]) == (shape[2], shape[0], shape[1]):
        raise ValueError(f"--initial_noise {path} has shape {noise.shape}: channels first, as diffusers' latents; "
                         f"this model takes [N, {', '.join(map(str, shape))}]: save np.transpose(latents, (0, 2, 3, 1))")
    if noise.ndim != len(shape) + 1 or noise.shape[1:] != shape or noise.shape[0] < 1:
        raise ValueError(f"--initial_noise {path} has shape {noise.shape}; this model takes noise [N, "
                         f"{', '.join(map(str, shape))}] with N >= 1")
    if num is not None and noise.shape[0] != num:
        raise ValueError(f"--initial_noise {path} holds {noise.shape[0]} samples' noise but --num is {num}; drop "
                         "--num (it is the file's N) or give a file of that many")
    noise = noise.astype(np.float32)
    if not np.isfinite(noise).all():
        raise ValueError(f"--initial_noise {path} holds NaN or infinite values")
    return noise


def noise_digest(noise: np.ndarray) -> str:
    """8 hex digits of the noise's bytes (its output file's name and record)."""
    return hashlib.sha256(np.ascontiguousarray(noise, np.float32).tobytes()).hexdigest()[:8]
