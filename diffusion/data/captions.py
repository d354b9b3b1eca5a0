"""Per-example caption transforms of the training pipeline (grain), before batching.

``{"image", "caption": str}`` -> ``{"image", "ids": [L] int32, "mask": [L] int32}``:
caption dropout (for classifier-free guidance: the caption becomes the empty prompt with
probability ``prob``, from grain's per-example seeded RNG, so a resumed run drops the
same captions), then tokenization. Strings never reach the devices.
"""

from __future__ import annotations

from typing import Any

import grain
import numpy as np


class DropCaption(grain.transforms.RandomMap):
    """Replaces the caption by ``""`` with probability ``prob``."""

    def __init__(self, prob: float):
        self.prob = float(prob)

    def random_map(self, element: dict, rng: np.random.Generator) -> dict:
        if rng.random() < self.prob:
            element = {**element, "caption": np.str_("")}
        return element


class Tokenize(grain.transforms.Map):
    """``caption`` -> ``ids``, ``mask`` (padded to ``max_length`` and truncated)."""

    def __init__(self, tokenizer: Any, max_length: int):
        self.tokenizer, self.max_length = tokenizer, int(max_length)

    def map(self, element: dict) -> dict:
        from diffusion.nn.text.tokenizer import tokenize

        ids, mask = tokenize(self.tokenizer, [str(element["caption"])], self.max_length)
        out = {k: v for k, v in element.items() if k != "caption"}
        return {**out, "ids": ids[0], "mask": mask[0]}
