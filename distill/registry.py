"""The registry of distillers (docs/design/distillation.md): each method registers itself
in its own file of ``distill/`` with its config fields, its teacher checks, what it makes
of the student's config, and how it builds its :class:`~distill.method.Method`.

``launch.distill`` and ``configs.common.distill_config`` know no method by name: a new
file in ``distill/`` (or a module in ``$KAIROS_DISTILLERS``) is a new ``distill.method``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import ml_collections

from diffusion.plugins import import_modules


class TeacherError(ValueError):
    """The configured teacher is missing or cannot be distilled by this method."""


@dataclasses.dataclass(frozen=True)
class Teacher:
    """What a method may check of its teacher, from the teacher run's config.

    Attributes:
      workdir: the teacher's work directory.
      pred_type: its network's output (``eps``, ``x0``, ``v``).
      null_label: its unconditional label when class-conditional, else None.
      cond_drop_prob: its training label dropout (classifier-free guidance needs > 0).
      w_conditioned: it is itself a w-conditioned (guided-distillation) student.
      text: it is a text-to-image model (prompts, not labels; its null condition is the
        empty prompt's context).
      method: the distill method that made it when it is itself a student, else None.
    """

    workdir: str
    pred_type: str
    null_label: int | None
    cond_drop_prob: float
    w_conditioned: bool
    text: bool = False
    method: str | None = None


@dataclasses.dataclass(frozen=True)
class BuildArgs:
    """What :attr:`Distiller.build` gets.

    Attributes:
      settings: the run's ``config.distill`` (the method's fields filled).
      student: the student's denoiser (``Distiller.wrap`` applied).
      teacher: the teacher run's denoiser.
      null_label: the unconditional label when class-conditional, else None.
      text: a text-to-image model (batches hold ``context`` and ``null_context``).
      image_shape: one sample's shape (``[H, W, C]``, a video's ``[F, H, W, C]``).
      teacher_params: the teacher checkpoint's params the run starts from.
      workdir: the run's work directory (a method checks its own files there; it writes
        only in ``Method.before_training``).
    """

    settings: ml_collections.ConfigDict
    student: Any
    teacher: Any
    null_label: int | None
    text: bool = False
    image_shape: tuple = ()
    teacher_params: Any = None
    workdir: Any = None


@dataclasses.dataclass(frozen=True)
class Distiller:
    """A distillation method.

    Attributes:
      name: its ``config.distill.method``.
      help: one line.
      defaults: its ``config.distill`` fields and their defaults (sized to the 8x8 digits
        teacher on a CPU).
      build: ``BuildArgs -> Method`` (loss, extra state, after_update).
      student: adjusts the resolved student config in place (run length, model, learning
        rate schedule) and returns its sampler: ``{"solver": ..., "steps": ...}``.
      check_teacher: ``(settings, Teacher) -> None``; raises :class:`TeacherError`.
      wrap: the student's denoiser as it is trained and sampled (e.g. a consistency
        function around the network's denoiser).
      smoke: ``config.distill`` values of the ``:smoke`` variants (seconds on a CPU).
      tunes_students: it tunes a distilled student (its teacher is a student; PSO), so the
        teacher may be any student; otherwise only a progressive student may teach.
      own_data: the run trains on its config's ``data`` (a target set), not the teacher's.
      legacy: values of fields the method gained since its first runs, for a saved
        ``config.json`` that lacks them: the settings those runs trained with
        (``configs.common.upgrade_config``); a field not named here takes its default.
    """

    name: str
    help: str
    defaults: Mapping[str, Any]
    build: Callable[[BuildArgs], Any]
    student: Callable[[ml_collections.ConfigDict], dict]
    check_teacher: Callable[[ml_collections.ConfigDict, Teacher], None] = lambda settings, teacher: None
    wrap: Callable[[Any], Any] = lambda denoiser: denoiser
    smoke: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    tunes_students: bool = False
    own_data: bool = False
    legacy: Mapping[str, Any] = dataclasses.field(default_factory=dict)


_DISTILLERS: dict[str, Distiller] = {}
_LOADED = False
GENERIC_FIELDS = ("method", "teacher_workdir")  # config.distill fields of every method


def register(distiller: Distiller) -> Distiller:
    clash = set(distiller.defaults) & set(GENERIC_FIELDS)
    if clash:
        raise ValueError(f"distiller {distiller.name!r}: fields {sorted(clash)} belong to every method")
    if distiller.name in _DISTILLERS and _DISTILLERS[distiller.name] != distiller:
        raise ValueError(f"a distiller named {distiller.name!r} is already registered")
    _DISTILLERS[distiller.name] = distiller
    return distiller


def _load() -> None:
    """Imports every module of ``distill/`` and ``$KAIROS_DISTILLERS`` once."""
    global _LOADED
    if not _LOADED:
        import_modules(("distill",), "KAIROS_DISTILLERS")
        _LOADED = True


def distillers() -> dict[str, Distiller]:
    _load()
    return dict(_DISTILLERS)


def get(name: str) -> Distiller:
    table = distillers()
    if name not in table:
        raise ValueError(f"unknown distill.method {name!r}; expected one of {', '.join(sorted(table))}")
    return table[name]
