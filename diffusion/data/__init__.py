"""Datasets by name and the per-process training iterator.

``make_source(name, split, ...)`` -> ``(source, DatasetInfo)``; names: ``digits``
(bundled), ``digits_thick`` (the same with thickened strokes: a target style for tuning), ``scenes`` (captioned digit scenes, ``diffusion/data/scenes.py``: splits
train / heldout / novel), ``synthetic`` (benchmarks), ``none`` (a model without data, e.g. imported
weights: its shape from ``resolution``, RGB), ``cifar10`` / ``mnist`` / ``fashion_mnist`` or any
``tfds:<name>`` (prepared TFDS data, no download), ``moving_digits`` (videos of bouncing digits,
``diffusion/data/moving_digits.py``: splits train / heldout, ``frames`` per video),
``imagefolder:<path>`` (captioned images with a ``metadata.jsonl``, ``diffusion/data/imagefolder.py``;
one split, train). A TFDS dataset holding videos is read with ``frames`` set, and for a
text-to-image model as images with a ``caption`` (or ``text``) feature, resized and
center-cropped as an image folder's (``diffusion/data/tfds_source.py``).
"""

from __future__ import annotations

from diffusion.data.sources import DatasetInfo, digits_source, synthetic_source

TFDS_ALIASES = ("cifar10", "mnist", "fashion_mnist")
SCENES_SIZES = {"train": 60_000, "heldout": 2_000, "novel": 2_000}
MOVING_DIGITS_SIZES = {"train": 20_000, "heldout": 1_000}
DATASETS = ("digits", "digits_thick", "scenes", "moving_digits", "synthetic", *TFDS_ALIASES, "tfds:<name>",
            "imagefolder:<path>")


def make_source(name: str, split: str, *, resolution: int | None = None, data_dir: str | None = None,
                frames: int | None = None, video_key: str | None = None, captions: bool = False):
    """Builds a data source by name (see module docstring); ``frames``: a video dataset's
    frames per example; ``video_key``: which video of a TFDS dataset holding several;
    ``captions``: a text-to-image model's data (a TFDS dataset's images and captions,
    resized to ``resolution``)."""
    tfds_name = name in TFDS_ALIASES or name.startswith("tfds:")
    if frames is not None and name != "moving_digits" and not tfds_name:
        raise ValueError(f"config.data.frames applies to video datasets (moving_digits or a TFDS video dataset); "
                         f"{name!r} holds images: leave it unset")
    if tfds_name and frames is not None and (isinstance(frames, bool) or not isinstance(frames, int) or frames < 2):
        raise ValueError(f"a TFDS video needs config.data.frames, an integer >= 2 (frames per video), got {frames!r}")
    if name == "moving_digits":
        from diffusion.data.moving_digits import CANVAS, MovingDigitsSource

        if resolution not in (None, CANVAS):
            raise ValueError(f"moving digits are {CANVAS}x{CANVAS}; set config.data.resolution={CANVAS}")
        if split not in MOVING_DIGITS_SIZES:
            raise ValueError(f"unknown moving_digits split {split!r}; expected one of {', '.join(MOVING_DIGITS_SIZES)}")
        if frames is None or isinstance(frames, bool) or not isinstance(frames, int) or frames < 2:
            raise ValueError(f"moving_digits needs config.data.frames, an integer >= 2 (frames per video), got {frames!r}")
        size = MOVING_DIGITS_SIZES[split]
        return MovingDigitsSource(split, size, frames), DatasetInfo((CANVAS, CANVAS, 1), 10, size, frames)
    if name in ("digits", "digits_thick"):
        return digits_source(split, resolution or 8, thick=name == "digits_thick")
    if name == "scenes":
        from diffusion.data.scenes import CANVAS, ScenesSource

        if resolution not in (None, CANVAS):
            raise ValueError(f"digit scenes are {CANVAS}x{CANVAS}; set config.data.resolution={CANVAS}")
        if split not in SCENES_SIZES:
            raise ValueError(f"unknown scenes split {split!r}; expected one of {', '.join(SCENES_SIZES)}")
        return ScenesSource(split, SCENES_SIZES[split]), DatasetInfo((CANVAS, CANVAS, 1), None, SCENES_SIZES[split])
    if name.startswith("imagefolder:"):
        from diffusion.data.imagefolder import ImageFolderSource

        if split != "train":
            raise ValueError(f"an image folder is one split (train), not {split!r}: give other images as their own "
                             "imagefolder:<path>")
        source = ImageFolderSource(name.removeprefix("imagefolder:"), resolution)
        return source, DatasetInfo((resolution, resolution, 3), None, len(source))
    if name == "none":
        r = resolution or 512
        return [], DatasetInfo((r, r, 3), None, 0)
    if name == "synthetic":
        return synthetic_source(split, resolution or 32)
    if tfds_name:
        from diffusion.data.tfds_source import tfds_source

        source, info = tfds_source(name.removeprefix("tfds:"), split, data_dir, frames, video_key,
                                   resolution if captions else None)
        if not captions and resolution is not None and resolution != info.image_shape[0]:
            raise ValueError(f"dataset {name!r} has {info.image_shape[0]}x{info.image_shape[1]} images but "
                             f"config.data.resolution={resolution}; set it to {info.image_shape[0]}")
        return source, info
    raise ValueError(f"unknown dataset {name!r}; available: {', '.join(DATASETS)}")


__all__ = ["DATASETS", "DatasetInfo", "make_source"]
