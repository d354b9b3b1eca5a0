"""The training input pipeline: grain over a random-access source, sharded per process.

Each process reads a disjoint shard (``process_index::process_count``), reshuffled each
epoch from ``seed``, and yields ``{"image": [B_local, H, W, C], "label": [B_local]}``.
The iterator is checkpointable (``grain.checkpoint.CheckpointSave``), so a resumed run
sees exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

import grain
import jax
import numpy as np


class RandomFlip(grain.transforms.RandomMap):
    """Horizontal flip with probability 1/2 (an importable class, so workers can use it)."""

    def random_map(self, element: dict, rng: np.random.Generator) -> dict:
        if rng.random() < 0.5:
            element = {**element, "image": element["image"][:, ::-1]}
        return element


def make_train_iterator(source, global_batch_size: int, seed: int, *, random_flip: bool = False,
                        process_index: int | None = None, process_count: int | None = None):
    """An endless, checkpointable iterator of this process's share of each global batch."""
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    if global_batch_size % process_count:
        raise ValueError(f"batch size {global_batch_size} is not divisible by {process_count} processes")
    ds = grain.MapDataset.source(source)[process_index::process_count]
    if len(ds) == 0:
        raise ValueError("the dataset is empty for this process")
    ds = ds.seed(seed).shuffle().repeat(None)
    if random_flip:
        ds = ds.random_map(RandomFlip())
    ds = ds.batch(global_batch_size // process_count, drop_remainder=True)
    return iter(ds.to_iter_dataset())
