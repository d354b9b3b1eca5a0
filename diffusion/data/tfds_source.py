"""TFDS datasets without TensorFlow: ``tfds.data_source`` (random access, NumPy).

Needs the dataset prepared under ``data_dir`` (``tfds build`` elsewhere, then copy
``~/tensorflow_datasets``); nothing is downloaded at run time. Tests use
``tfds.testing.mock_data``.
"""

from __future__ import annotations

import numpy as np

from diffusion.data.sources import DatasetInfo


class TfdsImageSource:
    """Wraps a TFDS data source: ``uint8 [H, W, C]`` images -> float32 in ``[-1, 1]``."""

    def __init__(self, source, image_key: str = "image", label_key: str | None = "label"):
        self.source, self.image_key, self.label_key = source, image_key, label_key

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> dict:
        record = self.source[i]
        image = np.asarray(record[self.image_key], np.float32) / 127.5 - 1.0
        label = record[self.label_key] if self.label_key else 0
        return {"image": image, "label": np.int32(label)}


def tfds_source(name: str, split: str, data_dir: str | None = None) -> tuple[TfdsImageSource, DatasetInfo]:
    """An image-classification TFDS dataset as a Kairos source.

    Raises:
      FileNotFoundError: when the dataset is not prepared under ``data_dir``, with how to
        fix it.
    """
    import tensorflow_datasets as tfds  # imported lazily: slow, and optional for digits

    try:
        builder = tfds.builder(name, data_dir=data_dir)
        source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except Exception as e:  # tfds raises AssertionError / DatasetNotFoundError variants
        raise FileNotFoundError(
            f"TFDS dataset {name!r} (split {split!r}) is not prepared under data_dir={data_dir!r}: {e}. "
            "Kairos never downloads at run time: prepare it with `tfds build` on a machine with network "
            "access and copy the directory, then set config.data.data_dir.") from e
    features = builder.info.features
    shape = tuple(features["image"].shape)
    num_classes = features["label"].num_classes if "label" in features else None
    if None in shape:
        raise ValueError(f"TFDS dataset {name!r} has variable image shape {shape}; pick a fixed-size dataset")
    return TfdsImageSource(source, label_key="label" if num_classes else None), DatasetInfo(shape, num_classes, len(source))
