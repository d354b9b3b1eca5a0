"""Random-access data sources (``__len__`` + ``__getitem__`` -> dict of NumPy arrays).

Every source yields ``{"image": [H, W, C] float32 in [-1, 1], "label": int32}``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from diffusion.data.digits import load_digits


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset."""

    image_shape: tuple[int, int, int]
    num_classes: int | None
    size: int
    num_frames: int | None = None  # a video dataset's frames per example (its examples are [F, H, W, C])


class ArraySource:
    """A source over in-memory arrays: ``images [N, H, W, C]``, ``labels [N]``."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "label": np.int32(self.labels[i])}


def digits_source(split: str, resolution: int = 8, thick: bool = False) -> tuple[ArraySource, DatasetInfo]:
    """The bundled digits (``diffusion/data/digits.py``); ``split``: train / heldout / all;
    ``thick``: their strokes thickened (``digits_thick``)."""
    images, labels = load_digits(split, resolution, thick)
    return ArraySource(images, labels), DatasetInfo((resolution, resolution, 1), 10, len(images))


class SyntheticSource:
    """Deterministic random images for benchmarks: item ``i`` is a function of ``(seed, i)``."""

    def __init__(self, size: int, image_shape: tuple[int, int, int], num_classes: int = 10, seed: int = 0):
        self.size, self.image_shape, self.num_classes, self.seed = size, image_shape, num_classes, seed

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> dict:
        rng = np.random.default_rng((self.seed, int(i)))
        image = rng.uniform(-1.0, 1.0, self.image_shape).astype(np.float32)
        return {"image": image, "label": np.int32(rng.integers(self.num_classes))}


def synthetic_source(split: str, resolution: int = 32, channels: int = 3, size: int = 50_000
                     ) -> tuple[SyntheticSource, DatasetInfo]:
    shape = (resolution, resolution, channels)
    seed = {"train": 0, "test": 1}.get(split, 2)
    return SyntheticSource(size, shape, 10, seed), DatasetInfo(shape, 10, size)
