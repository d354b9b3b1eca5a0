"""TFDS datasets without TensorFlow: ``tfds.data_source`` (random access, NumPy).

Images: a uint8 ``[H, W, C]`` feature ``image`` (and a ``label`` class, if any). Videos: a
uint8 ``[T, H, W, C]`` feature (a ``Video``, or a ``Sequence`` of images such as
``bair_robot_pushing_small``'s ``image_main``), of which the first ``frames`` are read
(``config.data.frames``; ``config.data.video_key`` picks one of several videos).

Needs the dataset prepared under ``data_dir`` (``tfds build`` elsewhere, then copy
``~/tensorflow_datasets``); nothing is downloaded at run time. Tests use
``tfds.testing.mock_data``.
"""

from __future__ import annotations

import numpy as np

from diffusion.data.sources import DatasetInfo


class TfdsImageSource:
    """Wraps a TFDS data source: ``uint8 [H, W, C]`` images (or ``[T, H, W, C]`` videos, of
    which the first ``frames`` are kept) -> float32 in ``[-1, 1]``."""

    def __init__(self, source, image_key: str = "image", label_key: str | None = "label", frames: int | None = None):
        self.source, self.image_key, self.label_key, self.frames = source, image_key, label_key, frames

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> dict:
        record = self.source[i]
        image = np.asarray(record[self.image_key])
        if self.frames is not None:
            if image.shape[0] < self.frames:
                raise ValueError(f"video {i} of the TFDS data holds {image.shape[0]} frames, fewer than "
                                 f"config.data.frames={self.frames}: lower it")
            image = image[: self.frames]
        label = record[self.label_key] if self.label_key else 0
        return {"image": image.astype(np.float32) / 127.5 - 1.0, "label": np.int32(label)}


class TfdsCaptionSource:
    """``{"image": [R, R, 3] float32 in [-1, 1], "caption": str}`` of a TFDS dataset with an
    image and a caption feature, each image preprocessed as an image folder's
    (``diffusion/data/imagefolder.py``: diffusers' resize of the shorter side and center crop)."""

    def __init__(self, source, name: str, caption_key: str, resolution: int):
        self.source, self.name, self.caption_key, self.resolution = source, name, caption_key, resolution

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> dict:
        from PIL import Image

        from diffusion.data.imagefolder import center_crop, resize_shorter

        record = self.source[i]
        caption = record[self.caption_key]
        caption = caption.decode("utf-8") if isinstance(caption, bytes) else str(caption)
        if not caption.strip():
            raise ValueError(f"TFDS dataset {self.name!r}, example {i}: its {self.caption_key!r} is empty; a caption "
                             "dataset needs a caption for every image")
        pixels = np.asarray(record["image"], np.uint8)
        image = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).convert("RGB")
        image = center_crop(resize_shorter(image, self.resolution), self.resolution)
        return {"image": np.asarray(image, np.float32) / 127.5 - 1.0, "caption": np.str_(caption)}


CAPTION_KEYS = ("caption", "text")


def _caption_key(name: str, features) -> str:
    """The caption feature: a top-level text feature named one of ``CAPTION_KEYS``."""
    import tensorflow_datasets as tfds

    texts = sorted(k for k, f in features.items() if isinstance(f, tfds.features.Text)) \
        if isinstance(features, tfds.features.FeaturesDict) else []
    for key in CAPTION_KEYS:
        if key in texts:
            return key
    nested = sorted(k for k in (features.keys() if isinstance(features, tfds.features.FeaturesDict) else ())
                    if k not in texts and "caption" in k)
    hint = (f"its captions ({', '.join(nested)}) are a list per image, which is not read yet" if nested
            else f"its text features: {', '.join(texts) or 'none'}")
    raise ValueError(f"TFDS dataset {name!r} has no caption for a text-to-image model: Kairos reads a text feature "
                     f"named {' or '.join(CAPTION_KEYS)}; {hint}")


def _arrays(features, rank: int) -> list[str]:
    """The uint8 features of ``rank`` (3: images, 4: videos), by name."""
    shapes, dtypes = features.shape, features.np_dtype
    if not isinstance(shapes, dict):
        return []
    return sorted(k for k, s in shapes.items() if isinstance(s, tuple) and len(s) == rank
                  and np.dtype(dtypes[k]) == np.uint8)


def _video_key(name: str, features, video_key: str | None) -> str:
    videos = _arrays(features, 4)
    if video_key is not None:
        if video_key not in videos:
            raise ValueError(f"config.data.video_key={video_key!r}, but TFDS dataset {name!r} has no such video; its "
                             f"videos: {', '.join(videos) or 'none'}")
        return video_key
    if not videos:
        raise ValueError(f"config.data.frames is set, but TFDS dataset {name!r} holds no uint8 [T, H, W, C] video "
                         "feature: leave config.data.frames unset for an image dataset")
    if "video" in videos:
        return "video"
    if len(videos) > 1:
        raise ValueError(f"TFDS dataset {name!r} holds several videos ({', '.join(videos)}): pick one with "
                         "config.data.video_key")
    return videos[0]


def tfds_source(name: str, split: str, data_dir: str | None = None, frames: int | None = None,
                video_key: str | None = None, caption_resolution: int | None = None
                ) -> tuple[TfdsImageSource | TfdsCaptionSource, DatasetInfo]:
    """An image (or, with ``frames``, video) TFDS dataset as a Kairos source; with
    ``caption_resolution`` (a text-to-image model's) its images and captions, resized and
    center-cropped to that resolution (:class:`TfdsCaptionSource`).

    Raises:
      FileNotFoundError: when the dataset is not prepared under ``data_dir``, with how to
        fix it.
      ValueError: a variable image shape; ``frames`` on an image dataset, more than its
        videos hold, or a video dataset without ``frames``.
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
    if frames is None and video_key is not None:
        raise ValueError("config.data.video_key picks a video of a TFDS video dataset: set config.data.frames too")
    if frames is None and "image" not in _arrays(features, 3):
        videos = _arrays(features, 4)
        hint = (f"it holds videos ({', '.join(videos)}): set config.data.frames" if videos
                else "Kairos reads a uint8 [H, W, C] feature named 'image'")
        raise ValueError(f"TFDS dataset {name!r} has no image feature: {hint}")
    if caption_resolution is not None:
        if frames is not None:
            raise ValueError("config.data.frames is set, but a text-to-image model reads images and captions")
        if isinstance(caption_resolution, bool) or not isinstance(caption_resolution, int) or caption_resolution < 1:
            raise ValueError(f"a caption dataset needs config.data.resolution, an integer >= 1, got "
                             f"{caption_resolution!r}")
        key = _caption_key(name, features)
        r = caption_resolution
        return TfdsCaptionSource(source, name, key, r), DatasetInfo((r, r, 3), None, len(source))
    key = "image" if frames is None else _video_key(name, features, video_key)
    shape = tuple(features.shape[key])
    if frames is not None:
        length, shape = shape[0], shape[1:]
        if length is not None and length < frames:
            raise ValueError(f"config.data.frames={frames}, but the videos of TFDS dataset {name!r} hold {length} "
                             "frames: lower it")
    per_example = isinstance(features, tfds.features.FeaturesDict)  # a Sequence's "label" would be per step
    num_classes = getattr(features["label"], "num_classes", None) if per_example and "label" in features else None
    if None in shape:
        raise ValueError(f"TFDS dataset {name!r} has variable image shape {shape}; pick a fixed-size dataset")
    return (TfdsImageSource(source, key, "label" if num_classes else None, frames),
            DatasetInfo(shape, num_classes, len(source), frames))
