"""Sweep specs for ``launch.evaluate``: which samplers (and seeds) to run.

Inline spec: ``;``-separated ``key=v1,v2`` entries, the cells are their product::

    solver=ddim,dpmpp2m;steps=5,10,20,50;guidance=none,2;time_shift=off,80:300;seed=0,1,2

A JSON file may hold the same as ``{"grid": {"solver": [...], ...}}`` and/or explicit
cells ``{"cells": [{"solver": "fpndm", "steps": 10, "time_shift": "5:550"}, ...]}``.
Keys: ``seed`` and the sampler keys of ``sampling/spec.py`` -- ``solver``, ``steps``,
``grid`` and every registered part's keys (``python -m launch.sample --helpfull`` lists
them). ``off`` / ``none`` switch a transform off. Inside a value ``/`` stands for the
``,`` of the command-line form (commas separate sweep values); JSON files may use either.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import pathlib

from sampling import registry
from sampling.spec import SamplerSpec

DEFAULT_SPEC = "solver=ddim;steps=10,20,50"


@dataclasses.dataclass(frozen=True)
class Cell:
    spec: SamplerSpec
    seed: int = 0

    def key(self, ckpt: int, num: int) -> str:
        return f"ckpt{ckpt}/{self.spec.tag()}/seed{self.seed}/n{num}"


def _off(value) -> bool:
    return value is None or str(value).strip().lower() in registry.OFF


def keys() -> tuple[str, ...]:
    return (*registry.CORE_KEYS, *registry.keys(), "seed")


def make_cell(values: dict, sweep: bool = False) -> Cell:
    """One cell. With ``sweep`` (a cell of a product), a knob of a transform that is off in
    this cell, or of a solver other than this cell's, is dropped:
    ``feature_cache=off,uniform:2;cache_branch=1`` is two cells, and so is
    ``solver=ddim,dpmpp2m;eta=0.5``."""
    values = dict(values)
    unknown = sorted(set(values) - set(keys()))
    if unknown:
        raise ValueError(f"unknown sweep key(s) {unknown}; keys: {', '.join(keys())}")
    if sweep:
        owners = registry.keys()
        for key in [k for k in values if k in owners and owners[k][1] is not None]:
            owner = owners[key][0]
            if owner in registry.transforms() and _off(values.get(owner)):
                values.pop(key)
            elif owner in registry.solvers() and owner != str(values.get("solver", "ddim")):
                values.pop(key)
    try:
        seed = registry.integer(0)(values.pop("seed", 0))
    except ValueError as e:
        raise ValueError(f"bad seed: {e}") from None
    return Cell(SamplerSpec.from_values(values), seed)


def product(grid: dict) -> list[Cell]:
    keys_ = list(grid)
    lists = [v if isinstance(v, list) else [v] for v in grid.values()]
    owners = registry.keys()
    for key in keys_:  # a knob whose part no cell uses is a mistake, not a no-op
        part, knob = owners.get(key, (None, None))
        if knob is None:
            continue
        if part in registry.transforms():
            used = part in keys_ and any(not _off(v) for v in lists[keys_.index(part)])
        else:
            used = part in ([str(v) for v in lists[keys_.index("solver")]] if "solver" in keys_ else ["ddim"])
        if not used:
            raise ValueError(f"sweep key {key} is a knob of {part}, which no cell applies: add "
                             + (f"{part}=..." if part in registry.transforms() else f"solver={part}"))
    return [make_cell(dict(zip(keys_, combo)), sweep=True) for combo in itertools.product(*lists)]


def parse_inline(text: str) -> dict:
    grid = {}
    for entry in filter(None, (e.strip() for e in text.split(";"))):
        if "=" not in entry:
            raise ValueError(f"sweep entry {entry!r} is not key=v1,v2 (spec: {text!r})")
        key, values = entry.split("=", 1)
        grid[key.strip()] = [v.strip() for v in values.split(",")]
    if not grid:
        raise ValueError(f"the sweep {text!r} holds no key=v1,v2 entry; give one such as \"steps=10,20\", or leave "
                         f"--sweep out for the default ({DEFAULT_SPEC})")
    return grid


def _from_json(path: pathlib.Path) -> list[Cell]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"sweep file {path} is not readable JSON: {e}") from None
    if not isinstance(data, dict) or not set(data) <= {"grid", "cells"} or not data:
        raise ValueError(f"sweep file {path} must hold an object with 'grid' (key -> list of values) and/or "
                         "'cells' (a list of objects), e.g. {\"grid\": {\"steps\": [10, 20]}}")
    grid, cells = data.get("grid", {}), data.get("cells", [])
    if not isinstance(grid, dict) or not isinstance(cells, list) or not all(isinstance(c, dict) for c in cells):
        raise ValueError(f"sweep file {path}: 'grid' must be an object and 'cells' a list of objects")
    return (product(grid) if grid else []) + [make_cell(c) for c in cells]


def parse_sweep(spec: str | None) -> list[Cell]:
    """An inline spec or a JSON file path -> the cells, in order, without duplicates.
    Each cell's sampler is checked here; what needs the model (guidance on labels, PHAST
    files) is checked by ``launch.evaluate`` before it samples anything. ``None`` is
    :data:`DEFAULT_SPEC`; an empty spec is an error, not the default."""
    spec = DEFAULT_SPEC if spec is None else spec
    if spec.endswith(".json"):
        path = pathlib.Path(spec)
        if not path.is_file():
            raise FileNotFoundError(f"sweep file {spec} does not exist")
        cells = _from_json(path)
    else:
        cells = product(parse_inline(spec))
    if not cells:
        raise ValueError(f"the sweep {spec!r} has no cells")
    return list(dict.fromkeys(cells))
