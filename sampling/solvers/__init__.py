"""Solvers by ``--solver`` name. Add one: a file with a ``flax.struct`` dataclass that has
``init(x, key) -> SolverState`` and ``step(state, model, t, t_next) -> SolverState``,
then register it here."""

from __future__ import annotations

from diffusion.schedules import Schedule
from sampling.solvers.base import SolverState
from sampling.solvers.ddim import DDIM
from sampling.solvers.ddpm import DDPM

SOLVERS = {"ddpm": DDPM, "ddim": DDIM}


def make_solver(name: str, schedule: Schedule, **knobs):
    """Builds a solver by name; ``knobs`` are its traced settings (e.g. ``eta``)."""
    if name not in SOLVERS:
        raise ValueError(f"unknown solver {name!r}; available: {', '.join(sorted(SOLVERS))}")
    return SOLVERS[name](schedule=schedule, **knobs)


__all__ = ["DDIM", "DDPM", "SOLVERS", "SolverState", "make_solver"]
