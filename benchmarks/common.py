"""Timing helpers for the benchmarks: warm-up, repeats, medians, machine description."""

from __future__ import annotations

import datetime
import os
import platform
import time
from typing import Callable

import jax
import numpy as np


def time_fn(fn: Callable[[], object], warmup: int = 2, repeats: int = 10) -> dict:
    """Runs ``fn`` (which must block until its result is ready) ``warmup + repeats`` times.

    Returns ``{"median_s", "min_s", "max_s", "repeats"}`` over the timed repeats.
    """
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"median_s": float(np.median(times)), "min_s": float(np.min(times)), "max_s": float(np.max(times)),
            "repeats": repeats}


def flops_of(lowered) -> float:
    """FLOPs of a lowered XLA program (``jax.jit(f).lower(...)``) from its HLO cost analysis
    (0 if unavailable).

    The lowered program, not the compiled one: a GPU-compiled program hands its convolutions
    and matmuls to cuDNN / cuBLAS as custom calls that the cost analysis does not count (seen on
    an H200: 0.35 TFLOP for a training step whose HLO holds 4.48). The lowered HLO is the same
    on every platform, so its count is too."""
    if not hasattr(lowered, "compile"):
        raise TypeError(f"flops_of takes a lowered program (jax.jit(f).lower(...)), got {type(lowered).__name__}: "
                        "a compiled one's count misses the convolutions and matmuls a GPU backend hands to libraries")
    cost = lowered.cost_analysis()
    if isinstance(cost, list):  # older jax returned one dict per device program
        cost = cost[0]
    return float(cost.get("flops", 0.0)) if cost else 0.0


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "date": datetime.date.today().isoformat(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "backend": jax.default_backend(),
        "devices": [d.device_kind for d in jax.devices()],
        "jax": jax.__version__,
    }


def time_interleaved(fns: dict[str, Callable[[], object]], repeats: int = 5) -> dict[str, float]:
    """Median seconds of each blocking function: one warm-up call each, then ``repeats``
    rounds that call every function once, so the drifts of a noisy machine hit all alike."""
    for fn in fns.values():
        fn()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: float(np.median(v)) for k, v in times.items()}


def emit(result: dict, out: str | None) -> None:
    """Prints the result as JSON and writes it to ``out`` when given (atomically)."""
    import json
    import pathlib

    text = json.dumps(result, indent=2, default=str)
    print(text)
    if out:
        from orchestration.workdir import files

        pathlib.Path(out).parent.mkdir(parents=True, exist_ok=True)
        files.write_text(out, text + "\n")


def write_keeping_verdict(path, text: str) -> None:
    """Writes a results page whose ``## Verdict`` section is the placeholder ``VERDICT``,
    keeping a verdict already written by hand in the existing file."""
    import pathlib

    path = pathlib.Path(path)
    old = path.read_text() if path.exists() else ""
    if "## Verdict" in old and "VERDICT" not in old:
        text = text.replace("## Verdict\n\nVERDICT\n", "## Verdict" + old.split("## Verdict", 1)[-1])
    from orchestration.workdir import files

    files.write_text(path, text)
