"""Captioned image folders as Hugging Face's and diffusers' text-to-image scripts read them.

``PATH/metadata.jsonl`` holds one JSON object per line with ``file_name`` (relative to
``PATH``) and ``text`` (the caption); the images sit beside it. Item ``i`` is ``{"image":
[R, R, 3] float32 in [-1, 1], "caption": str}``, preprocessed as diffusers'
``examples/text_to_image/train_text_to_image.py`` does with torchvision: ``Resize(R,
BILINEAR)`` (the shorter side to ``R``, the longer ``int(R * long / short)``, PIL's bilinear
filter, which antialiases), ``CenterCrop(R)`` (offsets ``int(round((size - R) / 2))``),
``ToTensor`` and ``Normalize([0.5], [0.5])``; RGB (grey and RGBA images converted by PIL).
Random crops and flips are per-step randomness: they belong to the pipeline, not the source.

Every row is checked once, when the source is built (before a run writes anything): a
line that is no JSON object, a missing key, an empty caption, a missing or unreadable image
are each named with their line number.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np

METADATA = "metadata.jsonl"
CAPTION_KEY = "text"


def resize_shorter(image, resolution: int):
    """torchvision's ``Resize(resolution)`` of a PIL image: the shorter side to ``resolution``,
    the longer scaled and truncated (``int``), bilinear."""
    from PIL import Image

    w, h = image.size
    short, long = (w, h) if w <= h else (h, w)
    if short == resolution:
        return image
    new_long = int(resolution * long / short)
    size = (resolution, new_long) if w <= h else (new_long, resolution)
    return image.resize(size, Image.BILINEAR)


def center_crop(image, resolution: int):
    """torchvision's ``CenterCrop(resolution)`` of a PIL image at least that large."""
    w, h = image.size
    top, left = int(round((h - resolution) / 2.0)), int(round((w - resolution) / 2.0))
    return image.crop((left, top, left + resolution, top + resolution))


def _rows(folder: pathlib.Path) -> list[tuple[str, str]]:
    """``[(file_name, caption)]`` of ``metadata.jsonl``, every row checked (module docstring)."""
    from PIL import Image

    path = folder / METADATA
    if not path.is_file():
        raise FileNotFoundError(f"{folder} has no {METADATA}: an image folder needs one JSON line per image, "
                                f'{{"file_name": "0001.png", "{CAPTION_KEY}": "a caption"}}')
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}, line {n}"
        try:
            row = json.loads(line)
        except ValueError as e:
            raise ValueError(f"{where} is not JSON ({e})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{where} is a {type(row).__name__}, not an object with file_name and {CAPTION_KEY}")
        missing = [k for k in ("file_name", CAPTION_KEY) if k not in row]
        if missing:
            raise ValueError(f"{where} has no {' or '.join(missing)} (it has {sorted(row)})")
        name, caption = row["file_name"], row[CAPTION_KEY]
        if not isinstance(caption, str) or not caption.strip():
            raise ValueError(f"{where}: the caption of {name!r} is empty (or not text): {caption!r}")
        image = folder / str(name)
        if not image.is_file():
            raise FileNotFoundError(f"{where}: the image {name!r} is not in {folder}")
        try:
            with Image.open(image) as im:
                im.verify()
        except Exception as e:  # noqa: BLE001 - PIL raises many kinds for a damaged file
            raise ValueError(f"{where}: the image {name!r} cannot be read ({type(e).__name__}: {e})") from None
        rows.append((str(name), caption))
    if not rows:
        raise ValueError(f"{path} lists no images")
    return rows


class ImageFolderSource:
    """Random-access ``{"image": [R, R, 3] float32 in [-1, 1], "caption": str}`` of a captioned
    image folder (module docstring)."""

    def __init__(self, folder: str | pathlib.Path, resolution: int):
        if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
            raise ValueError(f"an image folder needs config.data.resolution, an integer >= 1, got {resolution!r}")
        self.folder, self.resolution = pathlib.Path(folder), resolution
        if not self.folder.is_dir():
            raise FileNotFoundError(f"imagefolder:{folder} is not a folder")
        self.rows = _rows(self.folder)

    def __len__(self) -> int:
        return len(self.rows)

    def fingerprint(self) -> str:
        """Every row with its image file's size and modification time (a cache of encodings
        made from the folder is refused once these change)."""
        def stat(name: str) -> str:
            st = (self.folder / name).stat()
            return f"{st.st_size}:{st.st_mtime_ns}"
        return json.dumps([(name, caption, stat(name)) for name, caption in self.rows])

    def __getitem__(self, i: int) -> dict:
        from PIL import Image

        name, caption = self.rows[i]
        with Image.open(self.folder / name) as im:
            image = center_crop(resize_shorter(im.convert("RGB"), self.resolution), self.resolution)
            pixels = np.asarray(image, np.float32)
        return {"image": pixels / 127.5 - 1.0, "caption": np.str_(caption)}
