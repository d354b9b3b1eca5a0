"""The bundled digits dataset: scikit-learn's copy of the UCI optical digits.

1,797 grey-scale 8x8 images with 17 levels (0..16) and labels 0..9, stored in
``digits.npz`` beside this file (made by ``scripts/make_digits_npz.py``).

The split is fixed and documented: a permutation of all 1,797 indices by
``numpy.random.default_rng(0)``; the first ``NUM_TRAIN = 1437`` are ``train``, the last
360 (20%) are ``heldout`` (the FD-digits reference set; never trained on, also not by
the FD-digits classifier).
"""

from __future__ import annotations

import functools
import pathlib

import numpy as np

NUM_TRAIN = 1437
SPLITS = ("train", "heldout", "all")
_FILE = pathlib.Path(__file__).with_name("digits.npz")


@functools.lru_cache(maxsize=None)
def _raw() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with np.load(_FILE) as f:
        images, labels = f["images"], f["labels"]
    order = np.random.default_rng(0).permutation(len(images))
    return images, labels, order


def to_model_range(images_0_16: np.ndarray, resolution: int = 8) -> np.ndarray:
    """``[N, 8, 8]`` levels 0..16 -> ``[N, R, R, 1]`` float32 in ``[-1, 1]``.

    ``resolution`` must be a multiple of 8; larger sizes repeat pixels (nearest), which
    keeps the 17 grey levels exact and the 8x8 average-pool the inverse.
    """
    if resolution % 8:
        raise ValueError(f"digits resolution must be a multiple of 8, got {resolution}")
    x = images_0_16.astype(np.float32) / 8.0 - 1.0
    f = resolution // 8
    x = np.repeat(np.repeat(x, f, axis=1), f, axis=2)
    return x[..., None]


def thicken(images_0_16: np.ndarray) -> np.ndarray:
    """Thick strokes: grey dilation of ``[N, 8, 8]`` levels by a plus-shaped element (each
    pixel the maximum of itself and its 4 neighbours; outside the image counts as 0)."""
    x = np.pad(images_0_16, ((0, 0), (1, 1), (1, 1)))
    return np.max([x[:, 1:-1, 1:-1], x[:, :-2, 1:-1], x[:, 2:, 1:-1], x[:, 1:-1, :-2], x[:, 1:-1, 2:]], axis=0)


def load_digits(split: str = "train", resolution: int = 8, thick: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Returns ``(images [N, R, R, 1] float32 in [-1, 1], labels [N] int32)``.

    Args:
      split: ``train`` (1,437), ``heldout`` (360) or ``all`` (1,797, file order).
      resolution: 8 (native) or a multiple of 8 (nearest upsampling).
      thick: the strokes thickened (:func:`thicken`): the ``digits_thick`` dataset, a target
        style for tuning (docs/design/pso.md).
    """
    images, labels, order = _raw()
    if split == "train":
        idx = order[:NUM_TRAIN]
    elif split == "heldout":
        idx = order[NUM_TRAIN:]
    elif split == "all":
        idx = np.arange(len(images))
    else:
        raise ValueError(f"unknown digits split {split!r}; expected one of {', '.join(SPLITS)}")
    raw = thicken(images[idx]) if thick else images[idx]
    return to_model_range(raw, resolution), labels[idx].astype(np.int32)


def to_8x8(images: np.ndarray) -> np.ndarray:
    """``[N, R, R, 1]`` (R a multiple of 8) -> ``[N, 8, 8, 1]`` by average pooling."""
    n, r = images.shape[0], images.shape[1]
    if r % 8 or images.shape[2] != r:
        raise ValueError(f"expected square images with a side that is a multiple of 8, got {images.shape}")
    f = r // 8
    return np.asarray(images, np.float32).reshape(n, 8, f, 8, f, -1).mean(axis=(2, 4))
