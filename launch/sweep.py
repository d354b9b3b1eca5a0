"""Sweep specs for ``launch.evaluate``: which (solver, steps, guidance, time shift, ...) cells to run.

Inline spec: ``;``-separated ``key=v1,v2`` entries, the cells are their product::

    solver=ddim,dpmpp2m;steps=5,10,20,50;guidance=none,2;time_shift=off,80:300;seed=0,1,2

A JSON file may hold the same as ``{"grid": {"solver": [...], ...}}`` and/or explicit
cells ``{"cells": [{"solver": "fpndm", "steps": 10, "time_shift": "5:550"}, ...]}``.
Keys: solver, steps, grid, guidance (``none`` or a scale), time_shift (``off`` or
``WINDOW:CUTOFF``), time_shift_mode (query / destination), eta (``none`` or a value), seed,
attention_reuse (``off``, ``hurry:K``, ``phast:K``, ``steps:I/J/..``, ``block:K/START``),
feature_cache (``off``, ``uniform:N``, ``nonuniform:N/CENTER``), cache_branch. Inside the
reuse/cache values ``/`` stands for the ``,`` of the command-line form (commas separate
sweep values); JSON files may use either.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import pathlib

from launch.generate import SamplerSpec

KEYS = ("solver", "steps", "grid", "guidance", "time_shift", "time_shift_mode", "eta", "seed",
        "attention_reuse", "feature_cache", "cache_branch")
DEFAULT_SPEC = "solver=ddim;steps=10,20,50"


@dataclasses.dataclass(frozen=True)
class Cell:
    spec: SamplerSpec
    seed: int = 0

    def key(self, ckpt: int, num: int) -> str:
        return f"ckpt{ckpt}/{self.spec.tag()}/seed{self.seed}/n{num}"


def _none_or_float(v) -> float | None:
    return None if v is None or str(v).lower() in ("none", "off", "") else float(v)


def _time_shift(v) -> tuple[float, float] | None:
    if v is None or str(v).lower() in ("off", "none", ""):
        return None
    parts = str(v).replace(",", ":").split(":")
    if len(parts) != 2:
        raise ValueError(f"time_shift must be 'off' or WINDOW:CUTOFF (e.g. 80:300), got {v!r}")
    return float(parts[0]), float(parts[1])


def _schedule_spec(v) -> str | None:
    return None if v is None or str(v).lower() in ("off", "none", "") else str(v).replace("/", ",")


def make_cell(values: dict) -> Cell:
    unknown = set(values) - set(KEYS)
    if unknown:
        raise ValueError(f"unknown sweep key(s) {sorted(unknown)}; keys: {', '.join(KEYS)}")
    spec = SamplerSpec(
        solver=str(values.get("solver", "ddim")),
        steps=int(values.get("steps", 50)),
        grid=str(values.get("grid", "trailing")),
        guidance=_none_or_float(values.get("guidance")),
        time_shift=_time_shift(values.get("time_shift")),
        time_shift_mode=str(values.get("time_shift_mode", "query")),
        eta=_none_or_float(values.get("eta")),
        attention_reuse=_schedule_spec(values.get("attention_reuse")),
        feature_cache=_schedule_spec(values.get("feature_cache")),
        cache_branch=int(values.get("cache_branch", 0)),
    )
    return Cell(spec, int(values.get("seed", 0)))


def product(grid: dict) -> list[Cell]:
    keys = list(grid)
    lists = [v if isinstance(v, list) else [v] for v in grid.values()]
    return [make_cell(dict(zip(keys, combo))) for combo in itertools.product(*lists)]


def parse_inline(text: str) -> dict:
    grid = {}
    for entry in filter(None, (e.strip() for e in text.split(";"))):
        if "=" not in entry:
            raise ValueError(f"sweep entry {entry!r} is not key=v1,v2 (spec: {text!r})")
        key, values = entry.split("=", 1)
        grid[key.strip()] = [v.strip() for v in values.split(",")]
    return grid


def parse_sweep(spec: str | None) -> list[Cell]:
    """An inline spec or a JSON file path -> the cells, in order, without duplicates."""
    spec = spec or DEFAULT_SPEC
    path = pathlib.Path(spec)
    if spec.endswith(".json"):
        if not path.exists():
            raise FileNotFoundError(f"sweep file {spec} does not exist")
        data = json.loads(path.read_text())
        cells = product(data["grid"]) if "grid" in data else []
        cells += [make_cell(c) for c in data.get("cells", [])]
    else:
        cells = product(parse_inline(spec))
    from sampling.grids import GRIDS
    from sampling.solvers import SOLVERS

    for c in cells:
        if c.spec.solver not in SOLVERS:
            raise ValueError(f"unknown solver {c.spec.solver!r} in the sweep; available: {', '.join(sorted(SOLVERS))}")
        if c.spec.grid not in GRIDS:
            raise ValueError(f"unknown grid {c.spec.grid!r} in the sweep; available: {', '.join(GRIDS)}")
        _check_schedules(c.spec)
    return list(dict.fromkeys(cells))


def _check_schedules(spec) -> None:
    """Parses reuse/cache specs now, so a typo fails before any sampling (phast files are
    checked when the cell runs)."""
    from sampling.transforms.schedules import parse_attention_reuse, parse_feature_cache

    if spec.attention_reuse and not spec.attention_reuse.startswith("phast:"):
        parse_attention_reuse(spec.attention_reuse, spec.steps)
    if spec.feature_cache:
        parse_feature_cache(spec.feature_cache, spec.steps)
