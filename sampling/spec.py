"""``SamplerSpec``: a solver, a step count, a time grid and sampling transforms, with one
text form (docs/design/registry.md)::

    solver=ddim;steps=20;grid=trailing;eta=0.5;guidance=2;time_shift=80:300

Keys are ``solver``, ``steps``, ``grid`` and the registry's keys (every transform's name,
every knob flag); inside a value ``/`` stands for ``,``. ``config.sample.sampler``,
``config.eval.sampler``, sweep cells, ``launch.sample`` flags and records all use it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

from sampling import registry
from sampling.grids import check_grid, make_grid, sampling_schedule
from sampling.registry import OFF, BuildContext, ModelCaps, fmt

Knobs = tuple[tuple[str, Any], ...]
TAG_VERSION = 4  # of tag() and of what it names; orchestration/workdir migrates older records
# 3 (issue 26): a time shift's cutoff is the authors' 0-based index (old C = new C - 1);
#   cache_branch is DeepCache's numbering (old b = new b - 1, tagged -db instead of -b)
# 4 (issue 26): a video plan's given frames sit at t = 1/T and are DDIM-updated, and no network call
#   sees t < 1/T; a version-3 plan that gave frames (or lagged) is given_time=zero;given_update=clamp


def _is_off(value) -> bool:
    return value is None or str(value).strip().lower() in OFF


def _fill(part, given: Mapping[str, Any]) -> Knobs:
    """All knobs of ``part``, given values over defaults; a missing required one is an error."""
    out = {}
    for k in part.knobs:
        if k.name in given:
            out[k.name] = given[k.name]
        elif k.default is None:
            raise ValueError(f"{part.name} needs a value for its knob {k.name!r}")
        else:
            out[k.name] = k.default
    unknown = set(given) - set(out)
    if unknown:
        raise ValueError(f"{part.name} has no knob(s) {sorted(unknown)}; knobs: {[k.name for k in part.knobs]}")
    return tuple(out.items())


@dataclasses.dataclass(frozen=True)
class SamplerSpec:
    """What a sampler is, canonical and hashable: equal samplers compare equal.

    Attributes:
      solver: a registered solver name.
      steps: sampling steps (>= 1).
      grid: time grid (``sampling.grids.GRIDS``, optionally with an ``@0`` / ``@1`` end).
      solver_knobs: ``((knob, value), ...)`` of the solver, every knob filled.
      transforms: ``((name, ((knob, value), ...)), ...)`` sorted by name, every knob filled.
    """

    solver: str = "ddim"
    steps: int = 50
    grid: str = "trailing"
    solver_knobs: Knobs = ()
    transforms: tuple[tuple[str, Knobs], ...] = ()

    def __post_init__(self):
        part = registry.solver(self.solver)
        try:
            steps = registry.integer(1)(self.steps)
        except ValueError as e:
            raise ValueError(f"bad steps: {e}; sampling needs at least 1 step") from None
        check_grid(self.grid)
        object.__setattr__(self, "steps", steps)
        object.__setattr__(self, "solver_knobs", _fill(part, dict(self.solver_knobs)))
        filled = {name: _fill(registry.transform(name), dict(knobs)) for name, knobs in self.transforms}
        if len(filled) != len(self.transforms):
            raise ValueError(f"a transform appears twice in {self.transforms}")
        object.__setattr__(self, "transforms", tuple(sorted(filled.items())))

    # ---------------------------------------------------------------- text form

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> "SamplerSpec":
        """From flat ``key -> value`` (text or numbers; ``off`` / None: a transform not applied).

        Raises ValueError naming the key for an unknown key, a bad value, a solver knob of
        another solver, or a transform knob whose transform is off."""
        values = dict(values)
        keys = registry.keys()
        unknown = sorted(set(values) - set(keys) - set(registry.CORE_KEYS))
        if unknown:
            raise ValueError(f"unknown sampler key(s) {unknown}; keys: {', '.join(registry.CORE_KEYS + tuple(keys))}")
        solver = str(values.pop("solver", "ddim"))
        part = registry.solver(solver)
        steps = values.pop("steps", 50)
        grid = str(values.pop("grid", "trailing"))
        solver_knobs, transforms = {}, {}
        for key, value in values.items():  # transforms first: knob keys below need them
            if keys[key][1] is None and not _is_off(value):
                transforms[key] = registry.transform(key).parse_spec(value)
        for key, value in values.items():
            owner, knob_name = keys[key]
            if knob_name is None or _is_off(value):  # "none" / "off" for a knob: its default
                continue
            if owner in registry.solvers():
                if owner != solver:
                    raise ValueError(f"{key} applies to the {owner} solver only, not {solver!r}")
                target = solver_knobs
            elif owner not in transforms:
                raise ValueError(f"{key} is a knob of {owner}, which is off: set {owner} too")
            else:
                target = transforms[owner]
            knob = next(k for k in (part.knobs if target is solver_knobs else registry.transform(owner).knobs)
                        if k.name == knob_name)
            try:
                target[knob_name] = knob.parse(value)
            except ValueError as e:
                raise ValueError(f"bad {key} {value!r}: {e}") from None
        return cls(solver, steps, grid, tuple(solver_knobs.items()),
                   tuple((name, tuple(k.items())) for name, k in transforms.items()))

    @classmethod
    def parse(cls, text: str) -> "SamplerSpec":
        """``key=value;key=value...`` (one value per key)."""
        values = {}
        for entry in filter(None, (e.strip() for e in str(text).split(";"))):
            key, sep, value = entry.partition("=")
            if not sep:
                raise ValueError(f"sampler entry {entry!r} is not key=value (in {text!r})")
            if key.strip() in values:
                raise ValueError(f"sampler key {key.strip()!r} appears twice in {text!r}")
            values[key.strip()] = value.strip()
        return cls.from_values(values)

    def to_values(self) -> dict[str, Any]:
        """Flat ``key -> value``: core keys, each transform's SPEC text, and every flagged
        knob that differs from its default. ``from_values(to_values())`` is this spec."""
        out: dict[str, Any] = {"solver": self.solver, "steps": self.steps, "grid": self.grid}
        solver_part = registry.solver(self.solver)
        for k in solver_part.knobs:
            value = dict(self.solver_knobs)[k.name]
            if k.flag and value != k.default:
                out[k.flag] = value
        for name, knobs in self.transforms:
            part, knobs = registry.transform(name), dict(knobs)
            out[name] = part.format_spec(knobs)
            for k in part.knobs:
                if k.flag and knobs[k.name] != k.default:
                    out[k.flag] = knobs[k.name]
        return out

    def to_string(self) -> str:
        return ";".join(f"{k}={fmt(v).replace(',', '/')}" for k, v in self.to_values().items())

    def merged(self, overrides: Mapping[str, Any]) -> "SamplerSpec":
        """This spec with ``overrides`` (flat keys, e.g. command-line flags) on top. A new
        solver or a transform switched off drops their knobs unless overridden too."""
        values = self.to_values()
        keys = registry.keys()
        for key, value in overrides.items():
            dropped = None
            if key == "solver" and value != self.solver:
                dropped = self.solver
            elif key in keys and keys[key][1] is None and _is_off(value):
                dropped = key
            if dropped:
                for k in [k for k in values if keys.get(k, (None,))[0] == dropped and k not in overrides]:
                    values.pop(k)
            values[key] = value
        return SamplerSpec.from_values(values)

    def without(self, *names: str) -> "SamplerSpec":
        """The same sampler without the named transforms."""
        return dataclasses.replace(self, transforms=tuple((n, k) for n, k in self.transforms if n not in names))

    def knobs(self, name: str) -> dict | None:
        """The knobs of transform ``name``, or None when it is not applied."""
        return dict(dict(self.transforms)[name]) if name in dict(self.transforms) else None

    def tag(self) -> str:
        """A file-name-safe description, e.g. ``ddim_20steps_eta0.5_w2_ts80-300`` (version
        ``TAG_VERSION``): solver, steps, grid unless trailing, non-default solver knobs,
        then each transform's fragment in name order."""
        parts = [self.solver, f"{self.steps}steps"] + ([] if self.grid == "trailing" else [self.grid])
        for k in registry.solver(self.solver).knobs:
            value = dict(self.solver_knobs)[k.name]
            if value != k.default:
                parts.append(f"{k.name}{fmt(value)}")
        parts += [registry.transform(n).tag_of(dict(k)) for n, k in self.transforms]
        return "".join(c if c.isalnum() or c in "._-" else "-" for c in "_".join(parts))

    def label(self, exclude: tuple[str, ...] = ()) -> str:
        """Solver knobs and transforms in words for tables, e.g. ``eta 0.5, time_shift 80:300``
        (parts named in ``exclude`` left out)."""
        values = self.to_values()
        shown = [f"{k} {fmt(v)}" for k, v in values.items()
                 if k not in registry.CORE_KEYS and registry.keys()[k][0] not in exclude]
        return ", ".join(shown) or "off"

    # ---------------------------------------------------------------- building

    def build(self, denoiser: Any, caps: ModelCaps, external: Mapping[str, Callable[..., Any]] | None = None):
        """``(denoiser, solver, grid)`` ready for ``sampling.loop.sample``.

        Transforms wrap in their declared order; a part the model needs (``implicit``,
        e.g. the guidance input of a w-conditioned student) is applied even if not asked
        for. ``external`` holds data read from a work directory (``launch/``). A grid of fractional
        diffusers timesteps (``linspace``, ``karras``) reads the schedule as diffusers does between
        training steps (``sampling.grids.sampling_schedule``): the denoiser and the solver both
        get that reading."""
        schedule = sampling_schedule(self.grid, denoiser.schedule)
        if schedule is not denoiser.schedule:
            denoiser = with_schedule(denoiser, schedule)
        ctx = BuildContext(self.steps, caps, schedule, self.grid, external or {})
        solver = registry.solver(self.solver).make(schedule, **dict(self.solver_knobs))
        applied = {name: dict(knobs) for name, knobs in self.transforms}
        for part in registry.transforms().values():
            implicit = part.implicit(caps) if part.implicit and part.name not in applied else None
            if implicit is not None:
                applied[part.name] = dict(_fill(part, implicit))
        for name in applied:
            clash = sorted(set(registry.transform(name).excludes) & set(applied))
            if clash:
                raise ValueError(f"{name} cannot be combined with {', '.join(clash)}: drop one")
        for name in sorted(applied, key=lambda n: (registry.transform(n).order, n)):
            part = registry.transform(name)
            if part.wraps == "denoiser":
                denoiser = part.build(denoiser, applied[name], ctx)
            else:
                solver = part.build(solver, applied[name], ctx)
        grid = make_grid(self.grid, self.steps, schedule)
        for name in applied:
            part = registry.transform(name)
            if part.loop_grid is not None:
                grid = part.loop_grid(grid, applied[name], ctx)
        return denoiser, solver, grid

    def network_calls(self, schedule) -> int:
        """Network evaluations of one sample (without guidance's batch doubling)."""
        calls = registry.solver(self.solver).make(schedule, **dict(self.solver_knobs)).network_calls(self.steps)
        for name, knobs in self.transforms:
            part = registry.transform(name)
            if part.network_calls is not None:
                calls = part.network_calls(self.steps, dict(knobs))
        return calls


def with_schedule(denoiser: Any, schedule) -> Any:
    """``denoiser`` reading ``schedule``: a denoiser dataclass with a ``schedule`` field (the
    network's ``Denoiser``, the analytic mixtures) before any transform wraps it."""
    if not (dataclasses.is_dataclass(denoiser) and "schedule" in {f.name for f in dataclasses.fields(denoiser)}):
        raise ValueError(f"the grid reads the schedule as diffusers does between training steps, but "
                         f"{type(denoiser).__name__} has no schedule field to give it; build the sampler on the "
                         "plain denoiser")
    return dataclasses.replace(denoiser, schedule=schedule)


def make_spec(solver: str = "ddim", steps: int = 50, grid: str = "trailing", **values) -> SamplerSpec:
    """``SamplerSpec.from_values`` with keyword arguments, e.g.
    ``make_spec("ddim", 20, guidance=2, time_shift="80:300")``."""
    return SamplerSpec.from_values({"solver": solver, "steps": steps, "grid": grid, **values})
