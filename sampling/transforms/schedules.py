"""Boolean per-step schedules for attention-map reuse and feature caching.

Attention reuse: ``True`` = reuse the cached maps at that sampler step.
Feature caching: ``True`` = full step (recompute and cache).
All schedules are NumPy ``bool [num_steps]`` arrays, validated here so that bad input is
a clear error before anything is compiled.
"""

from __future__ import annotations

import math

import numpy as np


def _check_steps(num_steps: int) -> None:
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")


def reuse_steps(num_steps: int, steps) -> np.ndarray:
    """Reuse exactly at the given 0-based step indices (step 0 cannot reuse)."""
    _check_steps(num_steps)
    steps = sorted({int(s) for s in steps})
    bad = [s for s in steps if not 1 <= s < num_steps]
    if bad:
        raise ValueError(f"reuse steps {bad} out of range: use 1..{num_steps - 1} "
                         "(step 0 always computes, there is nothing to reuse yet)")
    out = np.zeros(num_steps, bool)
    out[steps] = True
    return out


def reuse_block(num_steps: int, k: int, start: int) -> np.ndarray:
    """A contiguous block of ``k`` reuse steps starting at step ``start``."""
    return reuse_steps(num_steps, range(start, start + k))


def hurry(num_steps: int, k: int) -> np.ndarray:
    """HURRY (Hunter et al.): the ``k`` reuse steps placed as late as possible — the
    last ``k`` steps, each reusing the map of step ``num_steps - k - 1``."""
    if not 0 <= k < num_steps:
        raise ValueError(f"hurry:K needs 0 <= K < {num_steps} (the number of steps), got {k}")
    return reuse_block(num_steps, k, num_steps - k)


def uniform_full(num_steps: int, interval: int) -> np.ndarray:
    """DeepCache uniform 1:N: a full step at every step index divisible by ``interval``."""
    _check_steps(num_steps)
    if interval < 1:
        raise ValueError(f"feature cache interval N must be >= 1, got {interval}")
    return np.arange(num_steps) % interval == 0


def nonuniform_full(num_steps: int, interval: int, center: int, power: float = 1.2) -> np.ndarray:
    """DeepCache non-uniform 1:N, as its code places the full steps
    (``sample_from_quad_center``, DeepCache@1691a3ab ``sd/pipeline_stable_diffusion.py:86-96``,
    ``experiments/ddpm/ddpm/functions/deepcache_denoising.py:19-31``): ``ceil(num_steps /
    interval)`` full steps, step 0 and ``center + trunc(Re(x ** p))`` for ``x`` linearly
    spaced from ``(-center) ** (1/p)`` (a complex number, as Python computes it) to
    ``(num_steps - center) ** (1/p)``, unique, endpoints dropped; ``p`` starts at ``power``
    and is lowered by 0.02 until the count is right (an error once ``p <= 1``, as in its SD
    pipeline). The placement is nearly uniform, mildly denser around ``center``.
    """
    _check_steps(num_steps)
    if interval < 1:
        raise ValueError(f"feature cache interval N must be >= 1, got {interval}")
    if not 0 <= center < num_steps:
        raise ValueError(f"nonuniform:N,CENTER needs 0 <= CENTER < {num_steps}, got {center}")
    if not (math.isfinite(power) and power > 1.0):
        raise ValueError(f"nonuniform:N,CENTER,POW needs a finite POW > 1, got {power}")
    count = math.ceil(num_steps / interval)
    p = power
    while p > 1.0:
        x = np.linspace(complex(-center) ** (1 / p), (num_steps - center) ** (1 / p), count + 1)
        positions = [0] + [int(v) + center for v in np.unique(np.real(x ** p).astype(np.int32))[1:-1]]
        if len(positions) == count:
            out = np.zeros(num_steps, bool)
            out[[q for q in positions if 0 <= q < num_steps]] = True
            return out
        p -= 0.02
    raise ValueError(f"nonuniform:{interval},{center} cannot place {count} full steps in {num_steps} steps; "
                     "use a smaller N or a center nearer the middle")


def check_length(name: str, schedule, num_steps: int | None) -> None:
    """A per-step schedule must have one entry per sampler step (an index past its end
    would be clamped under ``jit``, silently)."""
    length = np.shape(schedule)[0]
    if num_steps is not None and length != num_steps:
        raise ValueError(f"{name} schedule has {length} entries but sampling takes {num_steps} steps; "
                         f"build it for {num_steps} steps (sampling.transforms.schedules)")
