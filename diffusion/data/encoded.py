"""A text-to-image dataset read from its cached encodings (``data.cache_encodings``;
written by ``orchestration/experiments/encodings.py``, docs/design/real_models.md).

Item ``i`` is ``{"image": [h, w, c] the VAE posterior's mean, "latent_std": [h, w, c] its
std, "context": [L, D] the text encoder's states of the caption}`` in diffusion space (the
train step samples ``mean + std * eps``, ``diffusion/train/step.py: sample_latents``). With
flips cached, the item also holds the flipped image's ``image_flip`` / ``latent_std_flip``,
and :class:`EncodedFlip` picks one of the two per example. :class:`DropContext` is caption
dropout on encoded captions: the empty prompt's states instead, with probability ``prob``.
"""

from __future__ import annotations

import pathlib

import grain
import numpy as np

FIELDS = ("mean", "std", "mean_flip", "std_flip", "caption_index", "contexts", "null_context")


class EncodedSource:
    """Random access to a finished cache folder (its arrays opened memory-mapped on first use:
    the folder may be written after the source is made, before training starts)."""

    def __init__(self, folder: str | pathlib.Path, size: int):
        self.folder, self.size, self._arrays = pathlib.Path(folder), int(size), None

    def arrays(self) -> dict[str, np.ndarray]:
        if self._arrays is None:
            self._arrays = {name: np.load(self.folder / f"{name}.npy", mmap_mode="r")
                            for name in FIELDS if (self.folder / f"{name}.npy").exists()}
        return self._arrays

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> dict:
        a = self.arrays()
        out = {"image": np.array(a["mean"][i]), "latent_std": np.array(a["std"][i]),
               "context": np.array(a["contexts"][int(a["caption_index"][i])])}
        if "mean_flip" in a:
            out.update(image_flip=np.array(a["mean_flip"][i]), latent_std_flip=np.array(a["std_flip"][i]))
        return out


class EncodedFlip(grain.transforms.RandomMap):
    """The flipped image's encodings with probability 1/2 (the cache holds both)."""

    def random_map(self, element: dict, rng: np.random.Generator) -> dict:
        flip = rng.random() < 0.5
        out = {k: v for k, v in element.items() if not k.endswith("_flip")}
        if flip:
            out.update(image=element["image_flip"], latent_std=element["latent_std_flip"])
        return out


class DropContext(grain.transforms.RandomMap):
    """Replaces the context by the empty prompt's ``null [L, D]`` with probability ``prob``
    (the cached form of ``diffusion.data.captions.DropCaption``)."""

    def __init__(self, prob: float, null: np.ndarray):
        self.prob, self.null = float(prob), np.asarray(null, np.float32)

    def random_map(self, element: dict, rng: np.random.Generator) -> dict:
        if rng.random() < self.prob:
            element = {**element, "context": self.null}
        return element
