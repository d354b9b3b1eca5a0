"""A TFDS caption dataset for text-to-image training (issue 28, item 2), faked offline with
``tfds.testing.mock_data`` on ``ai2dcaption`` (coco_captions' builder needs TensorFlow, which
is not installed): each example is its image preprocessed exactly as an image folder's (the
same array saved as a PNG and read by ``imagefolder:``) and its caption; datasets without a
caption feature, or with a list of captions per image, are refused by name."""

import json

import numpy as np
import pytest
from PIL import Image

tfds = pytest.importorskip("tensorflow_datasets")

from diffusion.data import make_source  # noqa: E402


def test_examples_are_preprocessed_as_an_image_folder_and_keep_their_caption(tmp_path):
    with tfds.testing.mock_data(num_examples=4):
        source, info = make_source("tfds:ai2dcaption", "train", resolution=16, captions=True)
        raw = tfds.data_source("ai2dcaption", split="train")
        records = [raw[i] for i in range(4)]
        items = [source[i] for i in range(4)]
    assert info.image_shape == (16, 16, 3) and info.size == 4 and info.num_classes is None
    rows = []
    for i, record in enumerate(records):
        Image.fromarray(np.asarray(record["image"], np.uint8)).save(tmp_path / f"{i}.png")
        rows.append(json.dumps({"file_name": f"{i}.png", "text": str(items[i]["caption"])}))
    (tmp_path / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    folder, _ = make_source(f"imagefolder:{tmp_path}", "train", resolution=16)
    shapes = {np.asarray(r["image"]).shape[:2] for r in records}
    assert any(min(s) != 16 for s in shapes)  # the mock's images are not already 16x16: resizing is exercised
    for i, record in enumerate(records):
        caption = record["caption"]
        assert str(items[i]["caption"]) == (caption.decode() if isinstance(caption, bytes) else caption)
        np.testing.assert_array_equal(items[i]["image"], folder[i]["image"])
        assert items[i]["image"].shape == (16, 16, 3) and items[i]["image"].dtype == np.float32


def test_datasets_without_a_single_caption_are_named():
    with tfds.testing.mock_data(num_examples=2):
        with pytest.raises(ValueError, match="'mnist' has no caption for a text-to-image model"):
            make_source("mnist", "train", resolution=16, captions=True)
        with pytest.raises(ValueError, match="needs config.data.resolution, an integer >= 1, got 0"):
            make_source("tfds:ai2dcaption", "train", resolution=0, captions=True)
