"""Datasets by name and the per-process training iterator.

``make_source(name, split, ...)`` -> ``(source, DatasetInfo)``; names: ``digits``
(bundled), ``synthetic`` (benchmarks), ``cifar10`` / ``mnist`` / ``fashion_mnist`` or any
``tfds:<name>`` (prepared TFDS data, no download).
"""

from __future__ import annotations

from diffusion.data.sources import DatasetInfo, digits_source, synthetic_source

TFDS_ALIASES = ("cifar10", "mnist", "fashion_mnist")
DATASETS = ("digits", "synthetic", *TFDS_ALIASES, "tfds:<name>")


def make_source(name: str, split: str, *, resolution: int | None = None, data_dir: str | None = None):
    """Builds a data source by name (see module docstring)."""
    if name == "digits":
        return digits_source(split, resolution or 8)
    if name == "synthetic":
        return synthetic_source(split, resolution or 32)
    if name in TFDS_ALIASES or name.startswith("tfds:"):
        from diffusion.data.tfds_source import tfds_source

        source, info = tfds_source(name.removeprefix("tfds:"), split, data_dir)
        if resolution is not None and resolution != info.image_shape[0]:
            raise ValueError(f"dataset {name!r} has {info.image_shape[0]}x{info.image_shape[1]} images but "
                             f"config.data.resolution={resolution}; set it to {info.image_shape[0]}")
        return source, info
    raise ValueError(f"unknown dataset {name!r}; available: {', '.join(DATASETS)}")


__all__ = ["DATASETS", "DatasetInfo", "make_source"]
