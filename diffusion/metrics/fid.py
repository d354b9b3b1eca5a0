"""FID with the standard InceptionV3 pool3 features, as pytorch-fid 0.3.0 computes them.

``load_inception(path)`` reads pytorch-fid's weights file (``pt_inception-2015-12-05-6726825d.pth``,
read with ``torch.load(weights_only=True)``, or a ``.safetensors`` of the same tensors);
``inception_features`` runs :class:`diffusion.nn.inception.InceptionV3FID` jitted in batches;
``fid_from_features`` fits Gaussians and takes the Frechet distance (``frechet.py``, float64).
``save_stats`` / ``load_stats`` keep a reference set's ``(mu, sigma)`` in an ``.npz`` with keys
``mu`` and ``sigma`` -- the format of pytorch-fid's ``--save-stats``, so files go both ways.
"""

from __future__ import annotations

import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from diffusion.convert.inception import convert_inception
from diffusion.convert.tensors import load_state_dict
from diffusion.metrics.frechet import feature_stats, frechet_distance
from diffusion.nn.inception import FEATURES, SIZE, InceptionV3FID, resize_bilinear

WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{WEIGHTS_FILE}"


def load_inception(path: str | pathlib.Path) -> dict:
    """Flax params of pytorch-fid's FID Inception from its weights file (``.pth`` / ``.pt`` / ``.bin``
    torch pickle, or ``.safetensors``).

    Raises:
      FileNotFoundError: no such file (the message names the file to give and where it is published).
      ConversionError: a damaged file, or tensors that are not the FID Inception's.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no Inception weights at {path}: give pytorch-fid's {WEIGHTS_FILE} "
                                f"(published at {WEIGHTS_URL})")
    return convert_inception(load_state_dict(path), str(path))


@jax.jit
def _resize(x: jnp.ndarray) -> jnp.ndarray:
    return resize_bilinear(x.astype(jnp.float32))


@jax.jit
def _pool3(params: dict, x: jnp.ndarray) -> jnp.ndarray:
    return InceptionV3FID(resize_input=False).apply({"params": params}, x)


def inception_features(params: dict, images: np.ndarray, batch_size: int = 50) -> np.ndarray:
    """pytorch-fid's pool3 features: ``[N, H, W, 3]`` in ``[0, 1]`` (uint8 images are divided by
    255, as its ``ToTensor`` does) -> ``[N, 2048]`` float64.

    Batches of ``min(batch_size, N)`` (the last one padded), so the 299x299 network compiles
    once and the resize once per input size.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or len(images) == 0:
        raise ValueError(f"need images of shape [N >= 1, H, W, 3] (NHWC, RGB), got {images.shape}")
    if images.dtype == np.uint8:
        images = images.astype(np.float32) / 255.0
    batch = min(batch_size, len(images))
    out = []
    for i in range(0, len(images), batch):
        chunk = images[i:i + batch]
        x = np.pad(chunk, ((0, batch - len(chunk)), (0, 0), (0, 0), (0, 0)))
        x = _resize(jnp.asarray(x, jnp.float32)) if x.shape[1:3] != (SIZE, SIZE) else jnp.asarray(x, jnp.float32)
        out.append(np.asarray(_pool3(params, x), np.float64)[:len(chunk)])
    features = np.concatenate(out)
    assert features.shape == (len(images), FEATURES)
    return features


def fid_from_features(features1: np.ndarray, features2: np.ndarray) -> float:
    """FID between two feature sets ``[N1, D]``, ``[N2, D]`` (each ``N >= 2``), in float64."""
    return frechet_distance(*feature_stats(features1), *feature_stats(features2))


def fid_from_stats(stats1: tuple[np.ndarray, np.ndarray], stats2: tuple[np.ndarray, np.ndarray]) -> float:
    """FID between two ``(mu, sigma)`` pairs (e.g. a reference set's from :func:`load_stats`)."""
    return frechet_distance(*stats1, *stats2)


def _check_stats(mu: np.ndarray, sigma: np.ndarray, where: str) -> None:
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"{where}: mu has shape {mu.shape} and sigma {sigma.shape}; expected mu [D] and sigma [D, D]")


def save_stats(path: str | pathlib.Path, mu: np.ndarray, sigma: np.ndarray) -> None:
    """Writes ``mu [D]`` and ``sigma [D, D]`` (float64) to the ``.npz`` at ``path`` atomically: a
    reader sees the old file or the new one, never half of one."""
    path = pathlib.Path(path)
    mu, sigma = np.asarray(mu, np.float64), np.asarray(sigma, np.float64)
    _check_stats(mu, sigma, f"stats for {path}")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")  # same folder: os.replace stays atomic
    try:
        np.savez(tmp, mu=mu, sigma=sigma)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_stats(path: str | pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
    """``(mu [D], sigma [D, D])`` float64 from an ``.npz`` (:func:`save_stats`, or pytorch-fid's
    ``--save-stats``).

    Raises:
      FileNotFoundError: no such file.
      ValueError: not an ``.npz``, or without ``mu`` / ``sigma`` of matching shapes.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no FID statistics file at {path}")
    try:
        f = np.load(path, allow_pickle=False)
    except Exception as e:  # not a zip or .npy, a pickle, a truncated file, ...
        raise ValueError(f"{path} is not a readable .npz of FID statistics ({type(e).__name__})") from None
    if not isinstance(f, np.lib.npyio.NpzFile):
        raise ValueError(f"{path} holds one array, not an .npz with mu [D] and sigma [D, D]")
    with f:
        missing = [k for k in ("mu", "sigma") if k not in f.files]
        if missing:
            raise ValueError(f"{path} has no {' or '.join(missing)} (it holds {sorted(f.files)}): expected an .npz "
                             "with mu [D] and sigma [D, D] (save_stats writes one)")
        try:
            mu, sigma = np.asarray(f["mu"], np.float64), np.asarray(f["sigma"], np.float64)
        except Exception as e:  # a damaged member
            raise ValueError(f"{path}: could not read mu and sigma ({type(e).__name__})") from None
    _check_stats(mu, sigma, str(path))
    return mu, sigma
