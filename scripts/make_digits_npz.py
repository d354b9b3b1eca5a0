"""Writes diffusion/data/digits.npz from scikit-learn's bundled copy of the UCI digits.

The file ships with Kairos so the default experiment needs no download and no
scikit-learn data files at run time. Re-run only if the file is lost:
``python scripts/make_digits_npz.py``. ``tests/data/test_digits.py`` checks it equals
``sklearn.datasets.load_digits()``.
"""

import pathlib

import numpy as np
from sklearn.datasets import load_digits

out = pathlib.Path(__file__).resolve().parents[1] / "diffusion" / "data" / "digits.npz"
d = load_digits()
np.savez_compressed(out, images=d.images.astype(np.uint8), labels=d.target.astype(np.uint8))
print(f"wrote {out} ({out.stat().st_size} bytes)")
