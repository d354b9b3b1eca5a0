"""PHAST (Hunter et al.): a greedy search for an attention-reuse schedule (its files are
``orchestration/workdir/phast_files.py``'s).

The search keeps the number of reuse steps ``k`` fixed (fixed latency) and starts from
HURRY (the last ``k`` steps). A move swaps one reuse step with one computing step
(step 0 always computes); candidates are tried nearest-first (small ``|reuse - compute|``)
and the first that raises the score is kept (first-improvement hill climbing), until no
move improves or ``max_evals`` schedules have been scored. The score is the mean PSNR
against the no-reuse output on calibration noises; because the schedule is a traced
array, every candidate runs the same compiled program.
"""

from __future__ import annotations

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
