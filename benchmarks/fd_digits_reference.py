r"""Reference values of FD-digits: the floor and what corrupted sets score.

    python -m benchmarks.fd_digits_reference [--out docs/fd_digits_reference.json]

Scores the digits train split (the floor: real digits, finite samples), subsets of it,
and corrupted versions (additive noise, blur, uniform noise, one class only) against the
360 held-out digits.
"""

from __future__ import annotations

import json
import pathlib
import sys

import numpy as np
from scipy.ndimage import gaussian_filter

from benchmarks.common import machine
from diffusion.data.digits import load_digits
from diffusion.metrics.fd_digits import fd_digits


def main(out: str | None = None) -> dict:
    x, y = load_digits("train")
    rng = np.random.default_rng(0)
    sets = {
        "train split (1437)": (x, y),
        "train subset (1000)": (x[:1000], y[:1000]),
        "train subset (360)": (x[:360], y[:360]),
        "train + N(0, 0.1^2) pixel noise": (np.clip(x + 0.1 * rng.normal(size=x.shape), -1, 1), y),
        "train + N(0, 0.2^2) pixel noise": (np.clip(x + 0.2 * rng.normal(size=x.shape), -1, 1), y),
        "train blurred (gaussian sigma 0.5 px)": (gaussian_filter(x, sigma=(0, 0.5, 0.5, 0)), y),
        "train blurred (gaussian sigma 1 px)": (gaussian_filter(x, sigma=(0, 1, 1, 0)), y),
        "uniform noise (1000)": (rng.uniform(-1, 1, (1000, 8, 8, 1)), None),
        "one class only (digit 3)": (x[y == 3], y[y == 3]),
    }
    rows = {}
    for name, (images, labels) in sets.items():
        r = fd_digits(np.asarray(images, np.float32), labels)
        rows[name] = {"fd_digits": round(r["fd_digits"], 3), "num": r["num"],
                      **({"class_accuracy": round(r["class_accuracy"], 4)} if "class_accuracy" in r else {})}
        print(f"{name:40s} FD {r['fd_digits']:8.3f}  " +
              (f"acc {r['class_accuracy']:.4f}" if "class_accuracy" in r else ""), flush=True)
    result = {"rows": rows, "machine": machine()}
    if out:
        pathlib.Path(out).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main(sys.argv[sys.argv.index("--out") + 1] if "--out" in sys.argv else None)
