r"""Reference values of the digit-scenes metrics: what real scenes score, and what wrong
captions, blur and noise score.

    python -m benchmarks.scenes_metric_reference [--out docs/results/scenes_metric_reference.json]

Sets of 2,000 scenes each, scored against their captions with the cached scene parser
(``diffusion/metrics/scene_parser.py``); the scenes FD reference is the first 2,000
``heldout`` scenes, so ``heldout`` scenes 2,000-3,999 (other scenes, same distribution)
give the FD floor.
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy.ndimage import gaussian_filter

from benchmarks.common import emit, machine
from diffusion.data import scenes
from diffusion.metrics.caption_accuracy import score_scenes
from diffusion.metrics.scene_parser import RECIPE

N = 2000


def scene_set(split: str, start: int) -> tuple[np.ndarray, list[str]]:
    made = [scenes.make_scene(split, i) for i in range(start, start + N)]
    return np.stack([scenes.render(s, split) for s in made]), [s.caption.text() for s in made]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    held, captions = scene_set("heldout", N)
    rng = np.random.default_rng(0)
    sets = {
        "heldout scenes (other 2,000)": (held, captions),
        "train scenes": scene_set("train", 0),
        "novel scenes (held-out digit pairs)": scene_set("novel", 0),
        "heldout, captions shuffled": (held, list(rng.permutation(captions))),
        "heldout + N(0, 0.2^2) pixel noise": (np.clip(held + 0.2 * rng.normal(size=held.shape), -1, 1), captions),
        "heldout blurred (gaussian sigma 1 px)": (gaussian_filter(held, sigma=(0, 1, 1, 0)), captions),
        "uniform noise": (rng.uniform(-1, 1, held.shape), captions),
    }
    rows = {name: score_scenes(np.asarray(x, np.float32), c) for name, (x, c) in sets.items()}
    for name, r in rows.items():
        print(f"{name:40s} caption accuracy {r['caption_accuracy']:.3f}  scenes FD {r['scenes_fd']:.3f}")
    emit({"machine": machine(), "parser_recipe": RECIPE, "num": N, "rows": rows}, args.out)


if __name__ == "__main__":
    main()
