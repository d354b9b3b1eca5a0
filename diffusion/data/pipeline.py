"""The training input pipeline: grain over a random-access source, sharded per process.

One global order for any number of processes: the source is shuffled from ``seed`` (a new
permutation each epoch), flipped and transformed per element (each element's randomness
depends on its global position only), and cut into local batches of ``B / P`` elements;
global batch ``k`` is local batches ``k P .. k P + P - 1``, and process ``p`` reads only
local batches ``p, p + P, p + 2P, ...``: its piece of every global batch, nothing else. So
the global batches, hence the loss curve, are the same for 1 process or ``P``, and the
iterator's position (``{"next_index": k}`` after ``k`` steps) is the same on every
process: a checkpoint written by ``P`` processes resumes in any other number
(:func:`position` / :func:`set_position`). Each yields ``{"image": [B_local, H, W, C],
"label": [B_local]}`` (or what the per-example ``transforms`` make of a source's elements,
e.g. caption ids).
"""

from __future__ import annotations

from typing import Sequence

import grain
import jax
import numpy as np


class RandomFlip(grain.transforms.RandomMap):
    """Horizontal flip (the W axis of ``[H, W, C]`` images and ``[F, H, W, C]`` videos, all
    frames alike) with probability 1/2 (an importable class, so workers can use it)."""

    def random_map(self, element: dict, rng: np.random.Generator) -> dict:
        if rng.random() < 0.5:
            element = {**element, "image": element["image"][..., ::-1, :]}
        return element


def make_train_iterator(source, global_batch_size: int, seed: int, *, random_flip: bool = False,
                        transforms: Sequence = (), process_index: int | None = None,
                        process_count: int | None = None):
    """An endless, checkpointable iterator of this process's share of each global batch.
    ``transforms`` (grain maps, e.g. caption dropout and tokenization) run per example,
    after the flip and before batching."""
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    if global_batch_size % process_count:
        raise ValueError(f"batch size {global_batch_size} is not divisible by {process_count} processes")
    ds = grain.MapDataset.source(source)
    if len(ds) == 0:
        raise ValueError("the dataset is empty")
    ds = ds.seed(seed).shuffle().repeat(None)
    if random_flip:
        ds = ds.random_map(RandomFlip())
    for transform in transforms:
        ds = ds.random_map(transform) if isinstance(transform, grain.transforms.RandomMap) else ds.map(transform)
    ds = ds.batch(global_batch_size // process_count, drop_remainder=True)[process_index::process_count]
    return iter(ds.to_iter_dataset())


def position(data_iter) -> dict:
    """The iterator's position, the same on every process (JSON)."""
    return data_iter.get_state()


def set_position(data_iter, state: dict) -> None:
    data_iter.set_state(state)


class ImagesOnly(grain.transforms.Map):
    """Keeps only ``image`` (training a VAE: labels and captions are not needed)."""

    def map(self, element: dict) -> dict:
        return {"image": element["image"]}
