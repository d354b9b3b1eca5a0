"""Solvers: ``(init, step)`` dataclasses over a pytree state, one file each. A file here
registers its solvers (``sampling.registry.register(SolverPart(...))``) and is picked up
with no other edit (docs/design/registry.md)."""

from sampling.solvers.base import Solver, SolverState
from sampling.solvers.consistency import Consistency
from sampling.solvers.ddim import DDIM, DDPM
from sampling.solvers.dpm_solver import DPMSolverPP
from sampling.solvers.euler import Euler
from sampling.solvers.pndm import PLMS, PNDM

__all__ = ["Consistency", "DDIM", "DDPM", "DPMSolverPP", "Euler", "PLMS", "PNDM", "Solver", "SolverState"]
