"""Metric logging: ``metrics.jsonl`` (one JSON object per line) and TensorBoard events."""

from __future__ import annotations

import json
import pathlib
from typing import Mapping

import jax
import numpy as np


class MetricWriter:
    """Appends scalar metrics to ``<workdir>/metrics.jsonl`` and ``<workdir>/tb/``.

    Only process 0 writes; on other processes every call is a no-op.
    """

    def __init__(self, workdir: str | pathlib.Path, tensorboard: bool = True):
        self.active = jax.process_index() == 0
        self.path = pathlib.Path(workdir) / "metrics.jsonl"
        self.tb = None
        if self.active and tensorboard:
            from tensorboardX import SummaryWriter

            self.tb = SummaryWriter(str(pathlib.Path(workdir) / "tb"))

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        if not self.active:
            return
        values = {k: float(np.asarray(v)) for k, v in metrics.items()}
        with self.path.open("a") as f:
            f.write(json.dumps({"step": int(step), **values}) + "\n")
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(k, v, int(step))
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def read_metrics(workdir: str | pathlib.Path) -> list[dict]:
    """All records of ``metrics.jsonl`` (empty if none)."""
    path = pathlib.Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
