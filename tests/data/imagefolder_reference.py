"""diffusers' ``train_text_to_image.py`` preprocessing (torchvision, center crop, no flip) of
every image of a captioned folder, in its own process for tests/data/test_imagefolder.py:

    python -m tests.data.imagefolder_reference FOLDER RESOLUTION OUT.npz

torchvision comes from ``.venv/fid_reference`` (``tests/metrics/fid_reference.py`` says why).
"""

import json
import pathlib
import sys

import numpy as np

from tests.metrics.fid_reference import import_torchvision


def main(folder: pathlib.Path, resolution: int, out: pathlib.Path) -> None:
    torchvision = import_torchvision()
    from PIL import Image

    t = torchvision.transforms
    train_transforms = t.Compose([t.Resize(resolution, interpolation=t.InterpolationMode.BILINEAR),
                                  t.CenterCrop(resolution), t.ToTensor(), t.Normalize([0.5], [0.5])])
    images = []
    for line in (folder / "metadata.jsonl").read_text().splitlines():
        with Image.open(folder / json.loads(line)["file_name"]) as im:
            images.append(train_transforms(im.convert("RGB")).numpy().transpose(1, 2, 0))
    np.save(out, np.stack(images))


if __name__ == "__main__":
    main(pathlib.Path(sys.argv[1]), int(sys.argv[2]), pathlib.Path(sys.argv[3]))
