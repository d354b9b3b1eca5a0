"""Solvers by ``--solver`` name. Add one: a file with a ``flax.struct`` dataclass that has
``init(x, key) -> SolverState`` and ``step(state, model, t, t_next) -> SolverState``,
then register it here."""

from __future__ import annotations

import functools

from diffusion.schedules import Schedule
from sampling.solvers.base import SolverState
from sampling.solvers.consistency import Consistency
from sampling.solvers.ddim import DDIM, DDPM
from sampling.solvers.dpm_solver import DPMSolverPP
from sampling.solvers.pndm import PNDM

SOLVERS = {
    "ddpm": DDPM,
    "ddim": DDIM,
    "consistency": Consistency,
    "spndm": functools.partial(PNDM, fourth_order=False),
    "fpndm": functools.partial(PNDM, fourth_order=True),
    "dpmpp2m": functools.partial(DPMSolverPP, order=2),
    "dpmpp3m": functools.partial(DPMSolverPP, order=3),
}

# Network evaluations per step beyond the plain one (warm starts): (extra calls, steps).
WARM_START_CALLS = {"spndm": (1, 1), "fpndm": (3, 3)}


def make_solver(name: str, schedule: Schedule, **knobs):
    """Builds a solver by name; ``knobs`` are its traced settings (e.g. ``eta`` for ddim)."""
    if name not in SOLVERS:
        raise ValueError(f"unknown solver {name!r}; available: {', '.join(sorted(SOLVERS))}")
    return SOLVERS[name](schedule=schedule, **knobs)


def network_calls(name: str, steps: int) -> int:
    """Denoiser evaluations of ``steps`` steps of solver ``name`` (F-PNDM's warm start costs more)."""
    extra, warm = WARM_START_CALLS.get(name, (0, 0))
    return steps + extra * min(warm, steps)


__all__ = ["Consistency", "DDIM", "DDPM", "DPMSolverPP", "PNDM", "SOLVERS", "SolverState", "make_solver", "network_calls"]
