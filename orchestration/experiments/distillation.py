"""Runs a distillation experiment: a teacher work directory -> a student work directory.

Used by ``python -m launch.distill`` and the tests. The student's config is the
distillation config with ``data``, ``model``, ``diffusion``, ``text`` and ``latent`` copied
from the teacher's ``config.json`` (docs/design/distillation.md); a text or latent
teacher's frozen components (text encoder, tokenizer, VAE) are copied from its work
directory into the student's, so the student work directory loads,
samples and evaluates like any other. No method is named here: each is a
``distill.registry.Distiller`` registered in its own file.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import sys

import jax
import ml_collections

from diffusion.train.state import create_train_state
from distill import registry
from distill.registry import BuildArgs, Teacher, TeacherError
from orchestration.build.builders import build_denoiser, build_source, init_params, model_caps, sample_shape
from orchestration.experiments.init_from import start_from
from orchestration.experiments.runner import Experiment, run_experiment
from orchestration.build.builders import make_optimizer_from
from orchestration.build.run_loader import LoadedRun, load_run
from orchestration.build.validation import validate_config
from orchestration.workdir import files
from orchestration.workdir.directory import lock_holder, to_json_dict
from sampling.spec import SamplerSpec

TEACHER_FILE = "teacher.json"  # the teacher checkpoint a student started from


def load_teacher(config: ml_collections.ConfigDict) -> LoadedRun:
    """The teacher run named by ``config.distill.teacher_workdir``, checked generically and
    by the method (``Distiller.check_teacher``)."""
    d = config.distill
    distiller = registry.get(d.method)
    if not d.teacher_workdir:
        raise TeacherError("set distill.teacher_workdir to the work directory of a trained model "
                           "(e.g. --config.distill.teacher_workdir=runs/digits_v)")
    try:
        teacher = load_run(d.teacher_workdir)
    except FileNotFoundError as e:
        raise TeacherError(f"distill.teacher_workdir={d.teacher_workdir!r}: {e}") from None
    if not teacher.steps:
        raise TeacherError(f"teacher {d.teacher_workdir} has no checkpoint yet; train it first")
    method = teacher.config.distill.method if teacher.config.get("distill") is not None else None
    if method not in (None, "progressive") and not distiller.tunes_students:
        raise TeacherError(f"teacher {d.teacher_workdir} is a {method} student; "
                           "distil from a diffusion model or a progressive student")
    distiller.check_teacher(d, Teacher(str(d.teacher_workdir), teacher.config.model.pred_type, teacher.caps.null_label,
                                       teacher.config.diffusion.cond_drop_prob, teacher.caps.w_conditioned,
                                       teacher.caps.text, method))
    return teacher


def teacher_step(config: ml_collections.ConfigDict, teacher: LoadedRun, workdir: str | pathlib.Path) -> int:
    """The teacher checkpoint a run starts from: ``distill.teacher_step`` where the method
    declares it (PSO: which of a progressive run's students), else the one the student's
    ``teacher.json`` records (a resumed student keeps its teacher), else the newest committed
    one. A teacher still being trained is said, with the step taken."""
    step = config.distill.get("teacher_step")
    if step is not None and step not in teacher.steps:
        raise TeacherError(f"distill.teacher_step={step}: {teacher.workdir} has checkpoints at steps {teacher.steps}")
    recorded = read_teacher_record(workdir)
    if step is None and recorded is not None and recorded["step"] in teacher.steps:
        step = recorded["step"]
    elif step is None:
        step = teacher.steps[-1]
        if recorded is not None:
            print(f"note: the teacher checkpoint this student started from (step {recorded['step']}, "
                  f"{pathlib.Path(workdir) / TEACHER_FILE}) is gone from {teacher.workdir}; reading step {step} "
                  "(a resumed student trains on from its own checkpoint)", file=sys.stderr, flush=True)
    holder = lock_holder(teacher.workdir)
    if holder is not None:
        print(f"note: the teacher {teacher.workdir} is being written by {holder}; distilling from its checkpoint at "
              f"step {step}, the newest committed one it had when read (recorded in "
              f"{pathlib.Path(workdir) / TEACHER_FILE})", file=sys.stderr, flush=True)
    return step


def read_teacher_record(workdir: str | pathlib.Path) -> dict | None:
    """``{"workdir", "step"}`` of the student's ``teacher.json``, or None before its first start.

    Raises:
      ValueError: a damaged file (named).
    """
    path = pathlib.Path(workdir) / TEACHER_FILE
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            raise ValueError("no integer 'step'")
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"{path} is damaged ({e}); it records the teacher checkpoint this student started "
                         "from: restore it, or delete it to take the teacher's newest") from None
    return record


def record_teacher(teacher: LoadedRun, step: int):
    """A ``workdir -> None`` hook writing the student's ``teacher.json`` (atomically, once):
    the teacher's work directory and the checkpoint step the student started from."""
    def write(workdir: pathlib.Path) -> None:
        path = pathlib.Path(workdir) / TEACHER_FILE
        if jax.process_index() == 0 and not path.exists():
            files.write_text(path, json.dumps({"workdir": str(pathlib.Path(teacher.workdir).resolve()),
                                               "step": step}, indent=1) + "\n")
    return write


def student_config(config: ml_collections.ConfigDict, teacher: LoadedRun) -> ml_collections.ConfigDict:
    """The resolved student config: the teacher's data/model/diffusion, then what the method
    makes of it (``Distiller.student``: run length, model, the student's solver and steps,
    which ``sample`` and ``eval`` use with the config's transforms, on the method's grid or
    else the trailing one)."""
    c = ml_collections.ConfigDict(to_json_dict(config))
    own_data = registry.get(c.distill.method).own_data
    for section in ("model", "diffusion", "text", "latent") if own_data else ("data", "model", "diffusion", "text", "latent"):
        value = teacher.config.get(section)
        c[section] = None if value is None else ml_collections.ConfigDict(to_json_dict(value))
    c.model.dropout = 0.0  # the same architecture; distillation targets are deterministic
    sampler = registry.get(c.distill.method).student(c)
    for section in (c.sample, c.eval):
        section.sampler = SamplerSpec.parse(section.sampler).merged({"grid": "trailing", **sampler}).to_string()
    return c


def distill(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *, progress: bool = True,
            devices=None) -> dict:
    """Distils (or resumes distilling) into ``workdir``; returns the final evaluation (or {}).

    Raises:
      TeacherError: the teacher is missing or unfit for the method (nothing is written).
      ValueError: a bad config (nothing is written).
      WorkdirMismatchError: ``workdir`` holds a run with an incompatible config.
    """
    validate_config(config, "distill")  # the counts the method divides by, before it uses them
    teacher = load_teacher(config)
    config = student_config(config, teacher)
    validate_config(config, "distill")  # and what the method made of the student's config
    source, info = build_source(config)
    shape = lambda i: (tuple(i.image_shape), i.num_classes, i.num_frames)  # noqa: E731
    if shape(info) != shape(teacher.info):
        raise ValueError(f"config.data {config.data.name!r} holds {info.image_shape} samples of "
                         f"{info.num_classes} classes; the model tuned ({teacher.workdir}) was trained on "
                         f"{teacher.info.image_shape} of {teacher.info.num_classes}: use data of the same shape")
    student, caps = build_denoiser(config, info), model_caps(config, info)
    step = teacher_step(config, teacher, workdir)
    teacher_params = teacher.params(step)
    method = registry.get(config.distill.method).build(BuildArgs(config.distill, student, teacher.denoiser,
                                                                 caps.null_label, caps.text,
                                                                 sample_shape(config, info), teacher_params,
                                                                 pathlib.Path(workdir)))
    optimizer = make_optimizer_from(config.train, round_steps=config.distill.get("steps_per_round") or 0)

    def make(teacher_params):
        params = _start_from(init_params(config, info, jax.random.PRNGKey(config.seed)), teacher_params)
        state = create_train_state(params, optimizer, jax.random.fold_in(jax.random.PRNGKey(config.seed), 1))
        return state.replace(extra=method.init_extra(params, teacher_params))

    exp = Experiment(student, caps, source, info, optimizer, make, method.loss_fn, (teacher_params,),
                     method.after_update)
    if config.get("text") is not None or config.get("latent") is not None:
        from orchestration.experiments.frozen_parts import with_frozen_parts

        exp = with_frozen_parts(exp, config, pathlib.Path(workdir), components_from=teacher.workdir)
    exp = dataclasses.replace(exp, before_training=_chain(exp.before_training, record_teacher(teacher, step),
                                                          method.before_training))
    return run_experiment(config, workdir, exp, progress=progress, devices=devices)


def _start_from(fresh: dict, teacher: dict) -> dict:
    """The student's initial params: the teacher's, plus any new top-level module of the
    student (the w embedding) at its fresh initialisation."""
    try:
        return start_from(fresh, teacher, "the teacher")
    except ValueError as e:
        raise TeacherError(str(e)) from None


def _chain(*hooks):
    """One ``workdir -> None`` hook running the given ones (Nones skipped) in order."""
    def run(workdir):
        for hook in hooks:
            if hook is not None:
                hook(workdir)
    return run
