"""Captioned image folders (issue 28, item 2): ``imagefolder:PATH`` gives diffusers'
``train_text_to_image.py`` preprocessing (torchvision's Resize, CenterCrop, ToTensor, Normalize,
run in its own process: ``tests/data/imagefolder_reference.py``) for images larger, smaller,
taller and wider than the resolution, grey and RGBA; every bad row is named with its line."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from diffusion.data import make_source
from tests.metrics.fid_reference import ROOT, TARGET

# (file, PIL mode, width, height): wider, taller, smaller than 16, exactly 16, grey, RGBA
IMAGES = [("wide.png", "RGB", 40, 24), ("tall.jpg", "RGB", 19, 33), ("small.png", "RGB", 9, 12),
          ("exact.png", "RGB", 16, 16), ("grey.png", "L", 30, 17), ("alpha.png", "RGBA", 21, 21)]


def write_folder(folder, rows=None):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name, mode, w, h in IMAGES:
        channels = {"RGB": 3, "L": 1, "RGBA": 4}[mode]
        pixels = rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
        Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode).save(folder / name)
    rows = rows if rows is not None else [json.dumps({"file_name": n, "text": f"picture {i}"})
                                          for i, (n, *_) in enumerate(IMAGES)]
    (folder / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    return folder


def test_items_are_diffusers_preprocessing(tmp_path):
    if not (TARGET / "torchvision").is_dir():
        pytest.skip(f"torchvision is not in {TARGET}: run the README's test command, which installs it there")
    folder = write_folder(tmp_path / "folder")
    source, info = make_source(f"imagefolder:{folder}", "train", resolution=16)
    assert len(source) == info.size == len(IMAGES) and info.image_shape == (16, 16, 3) and info.num_classes is None
    proc = subprocess.run([sys.executable, "-m", "tests.data.imagefolder_reference", str(folder), "16",
                           str(tmp_path / "want.npy")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    want = np.load(tmp_path / "want.npy")
    got = np.stack([source[i]["image"] for i in range(len(source))])
    assert got.dtype == np.float32 and got.shape == want.shape == (len(IMAGES), 16, 16, 3)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    assert [str(source[i]["caption"]) for i in range(len(source))] == [f"picture {i}" for i in range(len(IMAGES))]


@pytest.mark.parametrize("line,words", [
    ('{"file_name": "wide.png"}', "line 2 has no text"),
    ('{"file_name": "wide.png", "text": "  "}', "line 2: the caption of 'wide.png' is empty"),
    ('{"file_name": "gone.png", "text": "a"}', "line 2: the image 'gone.png' is not in"),
    ('{"file_name": "damaged.png", "text": "a"}', "line 2: the image 'damaged.png' cannot be read"),
    ('["wide.png", "a"]', "line 2 is a list"),
    ('{"file_name": "wide.png", "text": "a"', "line 2 is not JSON"),
])
def test_a_bad_row_is_named_with_its_line(tmp_path, line, words):
    folder = write_folder(tmp_path / "folder", [json.dumps({"file_name": "tall.jpg", "text": "fine"}), line])
    (folder / "damaged.png").write_bytes((folder / "wide.png").read_bytes()[:40])
    with pytest.raises((ValueError, FileNotFoundError), match="metadata.jsonl, " + words.replace("(", r"\(")) as e:
        make_source(f"imagefolder:{folder}", "train", resolution=16)
    assert "\n" not in str(e.value)


def test_folder_and_split_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        make_source(f"imagefolder:{tmp_path / 'nowhere'}", "train", resolution=16)
    with pytest.raises(FileNotFoundError, match="has no metadata.jsonl"):
        make_source(f"imagefolder:{tmp_path}", "train", resolution=16)
    folder = write_folder(tmp_path / "folder")
    with pytest.raises(ValueError, match="one split"):
        make_source(f"imagefolder:{folder}", "heldout", resolution=16)
    for bad in (None, 0, -16):
        with pytest.raises(ValueError, match="resolution, an integer >= 1"):
            make_source(f"imagefolder:{folder}", "train", resolution=bad)
    (folder / "metadata.jsonl").write_text("\n\n")
    with pytest.raises(ValueError, match="lists no images"):
        make_source(f"imagefolder:{folder}", "train", resolution=16)
