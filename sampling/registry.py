"""The registry of sampling parts: solvers and sampling transforms (docs/design/registry.md).

Each part registers itself in its own file (``register(SolverPart(...))`` or
``register(TransformPart(...))``). The registry imports every module of
``sampling/solvers/`` and ``sampling/transforms/`` on first use, and the modules named in
``$KAIROS_PARTS`` (comma-separated), so a part defined elsewhere works everywhere a built-in
one does: ``launch.sample`` flags, sweep keys, ``config.sample``, tags.

Keys form one flat namespace: ``solver``, ``steps``, ``grid``, every transform's name,
and every knob that has a ``flag``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Callable, Mapping

from diffusion.plugins import import_modules

CORE_KEYS = ("solver", "steps", "grid")
# flags of the commands that take sampler flags, and the sweep's own key: no part may use them
RESERVED_KEYS = ("seed", "num", "ckpt", "ckpts", "batch_size", "overwrite", "workdir", "sweep", "k", "max_evals",
                 "config", "multihost", "helpfull", "help", "verbosity", "source")
OFF = ("off", "none", "")  # a transform key with one of these values is not applied


# ------------------------------------------------------------------------------------------
# Typed value parsers. Each takes the text (or a number) and returns the value, or raises
# ValueError saying what was expected.


def number(lo: float | None = None, hi: float | None = None) -> Callable[[Any], float]:
    """A finite float in ``[lo, hi]``."""

    def parse(text):
        try:
            value = float(text)
        except (TypeError, ValueError):
            raise ValueError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise ValueError(f"expected a finite number, got {text!r}")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise ValueError(f"{value:g} is out of range [{'-inf' if lo is None else f'{lo:g}'}, "
                             f"{'inf' if hi is None else f'{hi:g}'}]")
        return value

    return parse


def integer(lo: int | None = None, hi: int | None = None) -> Callable[[Any], int]:
    """An int in ``[lo, hi]``."""

    def parse(text):
        try:
            value = float(text)
        except (TypeError, ValueError):
            raise ValueError(f"expected an integer, got {text!r}") from None
        if not value.is_integer():
            raise ValueError(f"expected an integer, got {text!r}")
        value = int(value)
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise ValueError(f"{value} is out of range [{lo}, {'inf' if hi is None else hi}]")
        return value

    return parse


def choice(*options: str) -> Callable[[Any], str]:
    def parse(text):
        if str(text) not in options:
            raise ValueError(f"expected one of {', '.join(options)}, got {text!r}")
        return str(text)

    return parse


def fmt(value: Any) -> str:
    """The canonical text of a knob value: integral floats without ``.0``, others exactly."""
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    return str(value)


# ------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Knob:
    """A typed setting of a part.

    Attributes:
      name: its name inside the part (``window``).
      parse: text -> value (``number()``, ``integer()``, ``choice()``, or the part's own).
      default: the value when unset; ``None``: required (the part's spec string sets it).
      traced: a traced leaf of the built object, so sweeping it never recompiles.
      flag: its own key (``--flag`` and sweep key), e.g. ``time_shift_mode``; None: set by
        the part's spec string.
      help: one line for ``--help``.
      examples: two valid, different values (the registry's no-recompile test).
    """

    name: str
    parse: Callable[[Any], Any]
    default: Any = None
    traced: bool = True
    flag: str | None = None
    help: str = ""
    examples: tuple = ()


@dataclasses.dataclass(frozen=True)
class ModelCaps:
    """What the model being sampled can do, from its run's config (never from probing
    the network).

    Attributes:
      null_label: the unconditional label of a class-conditional model, else None.
      w_conditioned: the network takes ``cond["guidance"]`` (a guided-distillation student).
      self_attention: the network has self-attention layers (attention-map reuse).
      feature_branches: skip branches a feature cache can use (0: none).
      text: the network takes ``cond["context"]`` (text-encoder hidden states); guidance's
        null condition is ``cond["null_context"]``.
      frames: frames per video of a video model (``x [B, F, H, W, C]``), else None.
    """

    null_label: int | None = None
    w_conditioned: bool = False
    self_attention: bool = False
    feature_branches: int = 0
    text: bool = False
    frames: int | None = None


@dataclasses.dataclass(frozen=True)
class BuildContext:
    """What a part's ``build`` may use besides its knobs.

    Attributes:
      steps: sampling steps (schedules over steps have this length).
      caps: the model's capabilities.
      schedule: the model's noise schedule.
      grid: the sampler's time grid name (``sampling.grids.GRIDS``).
      external: data that ``launch/`` reads from a work directory for a part, by name
        (``{"phast": k -> bool [steps]}``); the sampling floor reads no files.
    """

    steps: int
    caps: ModelCaps
    schedule: Any = None
    grid: str = "trailing"
    external: Mapping[str, Callable[..., Any]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class SolverPart:
    """A solver: ``make(schedule, **knobs)`` returns an ``(init, step)`` dataclass."""

    name: str
    make: Callable[..., Any]
    help: str
    knobs: tuple[Knob, ...] = ()


@dataclasses.dataclass(frozen=True)
class TransformPart:
    """A sampling transform.

    Attributes:
      name: its key: ``--name SPEC`` on the command line, ``name=SPEC`` in sweeps and specs.
      wraps: ``"denoiser"`` or ``"solver"``: what ``build`` wraps (and returns).
      order: wrapping order among parts that wrap the same kind; lower wraps first
        (closer to the model or to the base solver).
      build: ``(inner, knobs, BuildContext) -> wrapped``; checks what needs the steps or the model.
      help: one line; what SPEC looks like.
      knobs: its knobs; those without a ``flag`` are set by SPEC, in order.
      parse: SPEC -> ``{knob: value}`` for the flagless knobs (default: the values
        separated by ``,`` or ``:``, one per flagless knob, each with its knob's parser).
      format: the inverse of ``parse`` (default: ``:``-joined values).
      tag: ``knobs -> str`` file-name fragment (default: name and values).
      implicit: ``caps -> knobs or None``: knobs to apply this part with when the model
        needs it but the spec does not ask for it.
      loop_grid: ``(grid, knobs, BuildContext) -> grid``: the grid the sampling loop walks,
        when the part needs another one than the sampler's (a pyramid plan runs longer).
      excludes: parts it cannot be combined with (a sampler asking for both is refused).
      network_calls: ``(steps, knobs) -> calls`` of one sample when the part changes them
        (loop-free sampling: one encoder and one batched decoder call, counted as 1).
    """

    name: str
    wraps: str
    order: int
    build: Callable[[Any, dict, BuildContext], Any]
    help: str
    knobs: tuple[Knob, ...] = ()
    parse: Callable[[str], dict] | None = None
    format: Callable[[dict], str] | None = None
    tag: Callable[[dict], str] | None = None
    implicit: Callable[[ModelCaps], dict | None] | None = None
    loop_grid: Callable[[Any, dict, BuildContext], Any] | None = None
    excludes: tuple[str, ...] = ()
    network_calls: Callable[[int, dict], int] | None = None

    def spec_knobs(self) -> tuple[Knob, ...]:
        return tuple(k for k in self.knobs if k.flag is None)

    def parse_spec(self, text: str) -> dict:
        """SPEC -> values of the flagless knobs, with a message naming the part on error."""
        text = str(text).strip().replace("/", ",")
        try:
            if self.parse is not None:
                return self.parse(text)
            parts = [p for p in re.split(r"[,:]", text)]
            spec = self.spec_knobs()
            if len(parts) != len(spec):
                raise ValueError(f"expected {len(spec)} value(s) ({', '.join(k.name for k in spec)}), got {len(parts)}")
            return {k.name: k.parse(p) for k, p in zip(spec, parts)}
        except ValueError as e:
            raise ValueError(f"bad {self.name} {text!r}: {e}. Expected {self.help}") from None

    def format_spec(self, knobs: dict) -> str:
        if self.format is not None:
            return self.format(knobs)
        return ":".join(fmt(knobs[k.name]) for k in self.spec_knobs())

    def tag_of(self, knobs: dict) -> str:
        if self.tag is not None:
            return self.tag(knobs)
        return self.name + "-" + "-".join(fmt(knobs[k.name]) for k in self.knobs)


_SOLVERS: dict[str, SolverPart] = {}
_TRANSFORMS: dict[str, TransformPart] = {}
_KEYS: dict[str, tuple[str, str | None]] = {}  # key -> (part name, knob name or None)
_LOADED = False
BUILTIN_PACKAGES = ("sampling.solvers", "sampling.transforms")


def register(part: SolverPart | TransformPart):
    """Adds a part; its name and knob flags must be new keys. Returns the part."""
    if isinstance(part, TransformPart) and part.wraps not in ("denoiser", "solver"):
        raise ValueError(f"part {part.name!r}: wraps must be 'denoiser' or 'solver', got {part.wraps!r}")
    table = _SOLVERS if isinstance(part, SolverPart) else _TRANSFORMS
    if part.name in _SOLVERS or part.name in _TRANSFORMS:
        if table.get(part.name) == part:
            return part  # the same module imported twice
        raise ValueError(f"a sampling part named {part.name!r} is already registered")
    keys = [] if isinstance(part, SolverPart) else [(part.name, (part.name, None))]
    keys += [(k.flag, (part.name, k.name)) for k in part.knobs if k.flag]
    for key, _ in keys:
        if key in CORE_KEYS or key in RESERVED_KEYS or (key in _KEYS and _KEYS[key][0] != part.name):
            raise ValueError(f"part {part.name!r}: key {key!r} is already taken")
    table[part.name] = part
    _KEYS.update(keys)
    return part


def _load() -> None:
    """Imports the built-in part modules and ``$KAIROS_PARTS`` once (again after a failure)."""
    global _LOADED
    if not _LOADED:
        import_modules(BUILTIN_PACKAGES, "KAIROS_PARTS")
        _LOADED = True


def solvers() -> dict[str, SolverPart]:
    _load()
    return dict(_SOLVERS)


def transforms() -> dict[str, TransformPart]:
    _load()
    return dict(_TRANSFORMS)


def solver(name: str) -> SolverPart:
    table = solvers()
    if name not in table:
        raise ValueError(f"unknown solver {name!r}; available: {', '.join(sorted(table))}")
    return table[name]


def transform(name: str) -> TransformPart:
    table = transforms()
    if name not in table:
        raise ValueError(f"unknown sampling transform {name!r}; available: {', '.join(sorted(table))}")
    return table[name]


def keys() -> dict[str, tuple[str, str | None]]:
    """Every registry key -> ``(part name, knob name)``; the knob is None for a transform's
    own key (its SPEC)."""
    _load()
    return dict(_KEYS)


def key_help() -> dict[str, str]:
    """Help line of every registry key (for generated flags)."""
    out = {}
    for part in solvers().values():
        for k in part.knobs:
            if k.flag:
                out[k.flag] = f"{k.help} ({part.name} solver; default {fmt(k.default)})"
    for part in transforms().values():
        out[part.name] = f"{part.help} ('off': not applied)"
        for k in part.knobs:
            if k.flag:
                out[k.flag] = f"{k.help} (with --{part.name}; default {fmt(k.default)})"
    return out
