"""PHAST (Hunter et al.): a greedy search for an attention-reuse schedule, and its files.

The search keeps the number of reuse steps ``k`` fixed (fixed latency) and starts from
HURRY (the last ``k`` steps). A move swaps one reuse step with one computing step
(step 0 always computes); candidates are tried nearest-first (small ``|reuse - compute|``)
and the first that raises the score is kept (first-improvement hill climbing), until no
move improves or ``max_evals`` schedules have been scored. The score is the mean PSNR
against the no-reuse output on calibration noises; because the schedule is a traced
array, every candidate runs the same compiled program.
"""

from __future__ import annotations

import json
import pathlib
from typing import Callable

import numpy as np

from sampling.transforms.schedules import hurry


def moves(schedule: np.ndarray) -> list[tuple[int, int]]:
    """``(reuse step, compute step)`` swaps, nearest first; step 0 never reuses."""
    reuse = np.flatnonzero(schedule)
    compute = [c for c in np.flatnonzero(~schedule) if c > 0]
    pairs = [(int(r), int(c)) for r in reuse for c in compute]
    return sorted(pairs, key=lambda rc: (abs(rc[0] - rc[1]), -rc[0]))


def search(score: Callable[[np.ndarray], float], num_steps: int, k: int, max_evals: int = 60,
           log: Callable[[str], None] | None = None) -> tuple[np.ndarray, float, list[dict]]:
    """Returns ``(best schedule bool [num_steps], its score, history of evaluations)``."""
    best = hurry(num_steps, k)
    best_score = score(best)
    history = [{"reuse_steps": np.flatnonzero(best).tolist(), "score": best_score, "kept": True}]
    improved = True
    while improved and len(history) < max_evals:
        improved = False
        for r, c in moves(best):
            if len(history) >= max_evals:
                break
            cand = best.copy()
            cand[r], cand[c] = False, True
            s = score(cand)
            kept = s > best_score
            history.append({"reuse_steps": np.flatnonzero(cand).tolist(), "score": s, "kept": kept})
            if log:
                log(f"[{len(history)}/{max_evals}] reuse {np.flatnonzero(cand).tolist()}: {s:.3f}"
                    + (" (kept)" if kept else ""))
            if kept:
                best, best_score, improved = cand, s, True
                break
    return best, best_score, history


def schedule_path(schedule_dir, sampler_tag: str, k: int) -> pathlib.Path:
    return pathlib.Path(schedule_dir) / f"{sampler_tag}_reuse{k}.json"


def save_schedule(path: pathlib.Path, schedule: np.ndarray, info: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"num_steps": int(len(schedule)), "reuse_steps": np.flatnonzero(schedule).tolist(), **info}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)


def load_schedule(schedule_dir, sampler_tag: str, num_steps: int, k: int) -> np.ndarray:
    """The schedule ``launch.phast`` wrote for this sampler and ``k``; a clear error if none."""
    if schedule_dir is None:
        raise ValueError("phast:K reads a schedule from the work directory; pass the workdir")
    path = schedule_path(schedule_dir, sampler_tag, k)
    if not path.exists():
        raise FileNotFoundError(
            f"no PHAST schedule at {path}: run `python -m launch.phast --workdir {pathlib.Path(schedule_dir).parent} "
            f"--k {k}` with the same solver, steps, grid and guidance first")
    data = json.loads(path.read_text())
    if data["num_steps"] != num_steps:
        raise ValueError(f"{path} was searched for {data['num_steps']} steps, not {num_steps}")
    out = np.zeros(num_steps, bool)
    out[data["reuse_steps"]] = True
    return out
