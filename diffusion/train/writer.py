"""Metric logging: ``metrics.jsonl`` (one JSON object per line) and TensorBoard events."""

from __future__ import annotations

import json
import pathlib
from typing import Mapping

import jax
import numpy as np


class MetricWriter:
    """Appends scalar metrics to ``<workdir>/metrics.jsonl`` and ``<workdir>/tb/``.

    ``resume_step``: the run continues after that step (a restored checkpoint), so rows
    logged after it by the interrupted run are dropped from ``metrics.jsonl`` and purged
    from TensorBoard: the re-run steps appear once. Only process 0 writes; on other
    processes every call is a no-op.
    """

    def __init__(self, workdir: str | pathlib.Path, tensorboard: bool = True, resume_step: int | None = None):
        self.active = jax.process_index() == 0
        self.path = pathlib.Path(workdir) / "metrics.jsonl"
        self.tb = None
        if self.active and resume_step is not None:
            dropped = truncate_after(self.path, resume_step)
            if dropped:
                print(f"dropped {dropped} row(s) of {self.path} logged after step {resume_step} (re-run now)",
                      flush=True)
        if self.active and tensorboard:
            from tensorboardX import SummaryWriter

            purge = None if resume_step is None else resume_step + 1
            self.tb = SummaryWriter(str(pathlib.Path(workdir) / "tb"), purge_step=purge)

    def write(self, step: int, metrics: Mapping[str, float], tensorboard: bool = True) -> None:
        """One ``metrics.jsonl`` row (and TensorBoard scalars unless ``tensorboard=False``)."""
        if not self.active:
            return
        values = {k: float(np.asarray(v)) for k, v in metrics.items()}
        with self.path.open("a") as f:
            f.write(json.dumps({"step": int(step), **values}) + "\n")
        if self.tb is not None and tensorboard:
            for k, v in values.items():
                self.tb.add_scalar(k, v, int(step))
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def read_metrics(workdir: str | pathlib.Path) -> list[dict]:
    """All records of ``metrics.jsonl`` (empty if none); a torn last line (a kill mid-write)
    is skipped."""
    path = pathlib.Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def truncate_after(path: pathlib.Path, step: int) -> int:
    """Drops the rows of ``path`` with ``step`` > ``step`` (atomically); returns how many."""
    if not path.exists():
        return 0
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    keep = []
    for line in lines:
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue  # a torn line from a kill mid-write
    if len(keep) != len(lines):
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(line + "\n" for line in keep))
        tmp.replace(path)
    return len(lines) - len(keep)
