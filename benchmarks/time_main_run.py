r"""Times the README's main job end to end and records its FD-digits.

    python -m benchmarks.time_main_run [--workdir /tmp/kairos_main] [--out docs/results/digits_default_run.json]

Runs ``python -m launch.train --config configs/digits.py --workdir W`` in a fresh
subprocess (W must not exist), measures the wall clock from start to exit, and writes
the final FD-digits, class accuracy, median training steps/s and the machine.
"""

from __future__ import annotations

import json
import pathlib
import statistics
import subprocess
import sys
import time

from benchmarks.common import machine
from diffusion.train.writer import read_metrics


def main(workdir: str, out: str | None) -> dict:
    wd = pathlib.Path(workdir)
    if wd.exists():
        raise SystemExit(f"{wd} exists; pass a new --workdir (this script never reuses a run)")
    cmd = [sys.executable, "-m", "launch.train", "--config", "configs/digits.py", "--workdir", str(wd)]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - t0
    fd = json.loads((wd / "fd_digits.json").read_text())
    rates = [r["steps_per_sec"] for r in read_metrics(wd) if "steps_per_sec" in r][1:]  # first has compile
    result = {
        "command": "python -m launch.train --config configs/digits.py --workdir W",
        "wall_clock_s": round(wall, 1),
        "fd_digits": fd["fd_digits"],
        "class_accuracy": fd.get("class_accuracy"),
        "eval": {k: fd[k] for k in ("num", "sampler", "sample_seconds")},
        "train_steps": fd["step"],
        "median_train_steps_per_s": statistics.median(rates),
        "machine": machine(),
    }
    print(json.dumps(result, indent=2))
    if out:
        pathlib.Path(out).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    args = sys.argv[1:]
    get = lambda name, default: args[args.index(name) + 1] if name in args else default  # noqa: E731
    main(get("--workdir", "/tmp/kairos_main"), get("--out", None))
