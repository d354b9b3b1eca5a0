"""Caption accuracy and the scenes FD: how well digit-scene samples show their captions.

Caption accuracy is GenEval-style: a sample counts only if *every* statement of its
caption holds in the parsed scene (``scene_parser.py``): as many digits as mentioned,
each mention matched to a different detected digit of that class with the stated size
and stroke, and the stated arrangement (left of, above, left to right) true of the
matched digits' centres. The scenes FD is the Frechet distance between the parser's
pooled features of the samples and of ``heldout`` scenes.
"""

from __future__ import annotations

import functools
import itertools
from typing import Sequence

import numpy as np

from diffusion.data import scenes
from diffusion.metrics.frechet import feature_stats, frechet_distance
from diffusion.metrics.scene_parser import Detection, detections, run_parser

REFERENCE_SIZE = 2000


def caption_holds(caption: scenes.Caption, found: Sequence[Detection]) -> bool:
    """Whether every statement of ``caption`` is true of the detected digits."""
    mentions = caption.mentions
    if len(found) != len(mentions):
        return False
    for order in itertools.permutations(found):
        if not all(d.digit == m.digit and m.size in (None, d.size) and m.stroke in (None, d.stroke)
                   for m, d in zip(mentions, order)):
            continue
        xs, ys = [d.center[0] for d in order], [d.center[1] for d in order]
        if caption.relation in ("left", "row") and not all(a < b for a, b in zip(xs, xs[1:])):
            continue
        if caption.relation == "above" and not ys[0] < ys[1]:
            continue
        return True
    return False


@functools.lru_cache(maxsize=1)
def reference_stats() -> tuple[np.ndarray, np.ndarray, float]:
    """``(mean, covariance, scale)`` of the parser features of the first 2,000 ``heldout``
    scenes; ``scale`` multiplies raw features so that this covariance has trace ``D``
    (as FD-digits does), which makes the numbers comparable across parser recipes."""
    src = scenes.ScenesSource("heldout", REFERENCE_SIZE)
    feats = run_parser(np.stack([src[i]["image"] for i in range(len(src))]))[1]
    scale = float(np.sqrt(feats.shape[1] / np.trace(feature_stats(feats)[1])))
    return (*feature_stats(feats * scale), scale)


def score_scenes(images: np.ndarray, captions: Sequence[str]) -> dict:
    """Scores samples of digit scenes.

    Args:
      images: ``[N, 32, 32, 1]`` in ``[-1, 1]`` (N >= 2; use >= 1000 for the FD).
      captions: the ``N`` captions the samples were asked to show (the scenes grammar).

    Returns:
      ``{"caption_accuracy", "scenes_fd", "num"}``.
    """
    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    parsed = [scenes.parse_caption(c) for c in captions]
    heads, feats = run_parser(images)
    hits = [caption_holds(c, detections(heads, i)) for i, c in enumerate(parsed)]
    ref_mu, ref_cov, scale = reference_stats()
    mu, cov = feature_stats(feats * scale)
    return {"caption_accuracy": float(np.mean(hits)), "scenes_fd": frechet_distance(mu, cov, ref_mu, ref_cov),
            "num": int(len(images))}
