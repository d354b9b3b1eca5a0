"""Runs a distillation experiment: a teacher work directory -> a student work directory.

Used by ``python -m launch.distill`` and the tests. The student's config is the
distillation config with ``data``, ``model`` and ``diffusion`` copied from the teacher's
``config.json`` (docs/design/distillation.md), so the student work directory loads,
samples and evaluates like any other.
"""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import ml_collections

from diffusion.train.state import create_train_state
from distill import consistency_distillation, guided_distillation, progressive_distillation
from distill.progressive import students_steps
from launch.builders import build_denoiser, build_source, init_params, model_caps
from launch.experiment import Experiment, make_optimizer_from, run_experiment
from launch.run_loader import LoadedRun, load_run
from launch.workdir import prepare_workdir, to_json_dict
from sampling.spec import SamplerSpec

METHODS = ("progressive", "guided", "consistency")


class TeacherError(ValueError):
    """The configured teacher is missing or cannot be distilled by this method."""


def load_teacher(config: ml_collections.ConfigDict) -> LoadedRun:
    """The teacher run named by ``config.distill.teacher_workdir``, checked for the method."""
    d = config.distill
    if d.method not in METHODS:
        raise ValueError(f"unknown distill.method {d.method!r}; expected one of {', '.join(METHODS)}")
    if not d.teacher_workdir:
        raise TeacherError("set distill.teacher_workdir to the work directory of a trained model "
                           "(e.g. --config.distill.teacher_workdir=runs/digits_v)")
    try:
        teacher = load_run(d.teacher_workdir)
    except FileNotFoundError as e:
        raise TeacherError(f"distill.teacher_workdir={d.teacher_workdir!r}: {e}") from None
    if not teacher.steps:
        raise TeacherError(f"teacher {d.teacher_workdir} has no checkpoint yet; train it first")
    if teacher.config.get("distill") is not None and teacher.config.distill.method != "progressive":
        raise TeacherError(f"teacher {d.teacher_workdir} is a {teacher.config.distill.method} student; "
                           "distil from a diffusion model or a progressive student")
    pred = teacher.config.model.pred_type
    if d.method in ("progressive", "guided") and pred == "eps":
        raise TeacherError(
            f"{d.method} distillation needs a v- or x0-prediction teacher, but {d.teacher_workdir} predicts eps: "
            "its x0 = (x_t - sigma eps) / alpha blows up at t = 1, where a few-step student starts. "
            "Train one with `python -m launch.train --config configs/digits_v.py --workdir runs/digits_v`.")
    if d.method == "guided":
        if teacher.num_classes is None or not teacher.config.diffusion.cond_drop_prob > 0:
            raise TeacherError(f"guided distillation needs a class-conditional teacher trained with label dropout "
                               f"(diffusion.cond_drop_prob > 0); {d.teacher_workdir} has "
                               f"num_classes={teacher.num_classes}, "
                               f"cond_drop_prob={teacher.config.diffusion.cond_drop_prob}")
        if teacher.config.model.guidance_embed:
            raise TeacherError(f"{d.teacher_workdir} is already a w-conditioned student")
    if d.method == "consistency" and d.teacher_guidance != 1.0 and teacher.num_classes is None:
        raise TeacherError(f"distill.teacher_guidance={d.teacher_guidance} needs a class-conditional teacher")
    return teacher


def final_steps(config: ml_collections.ConfigDict) -> int:
    """The sampling steps of the finished student."""
    d = config.distill
    if d.method == "consistency":
        return d.sample_steps
    return students_steps(d.start_steps, d.rounds)[-1]


def student_config(config: ml_collections.ConfigDict, teacher: LoadedRun) -> ml_collections.ConfigDict:
    """The resolved student config: the teacher's data/model/diffusion, the run length
    and sampling settings the method implies."""
    c = ml_collections.ConfigDict(to_json_dict(config))
    for section in ("data", "model", "diffusion"):
        c[section] = ml_collections.ConfigDict(to_json_dict(teacher.config[section]))
    c.model.dropout = 0.0  # the same architecture; distillation targets are deterministic
    c.model.guidance_embed = c.distill.method == "guided"
    d = c.distill
    if d.method in ("progressive", "guided"):
        rounds = students_steps(d.start_steps, d.rounds)
        c.train.num_steps = d.steps_per_round * len(rounds)
        c.train.keep_every = d.steps_per_round  # one kept checkpoint per round
        if d.steps_per_round % c.train.ckpt_every:
            raise ValueError(f"train.ckpt_every={c.train.ckpt_every} must divide distill.steps_per_round="
                             f"{d.steps_per_round} (a checkpoint at the end of every round)")
        c.train.lr_schedule = "round_linear"
    n, solver = final_steps(c), "consistency" if d.method == "consistency" else "ddim"
    for section in (c.sample, c.eval):  # the student's own grid; the config's transforms (guidance) stay
        section.sampler = SamplerSpec.parse(section.sampler).merged(
            {"solver": solver, "steps": n, "grid": "trailing"}).to_string()
    return c


def build_method(config: ml_collections.ConfigDict, student, classes: int | None, teacher: LoadedRun):
    d = config.distill
    if d.method == "progressive":
        return progressive_distillation(student, start_steps=d.start_steps, steps_per_round=d.steps_per_round,
                                        rounds=d.rounds, weighting=d.weighting, num_classes=classes)
    if d.method == "guided":
        return guided_distillation(student, start_steps=d.start_steps, steps_per_round=d.steps_per_round,
                                   rounds=d.rounds, num_classes=classes, w_range=(d.w_min, d.w_max),
                                   p_guided=d.p_guided, weighting=d.weighting)
    return consistency_distillation(teacher.denoiser, student, num_skip=d.num_skip, target_decay=d.target_decay,
                                    teacher_guidance=d.teacher_guidance, loss=d.loss, num_classes=classes)


def distill(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *, progress: bool = True,
            devices=None) -> dict:
    """Distils (or resumes distilling) into ``workdir``; returns the final evaluation (or {}).

    Raises:
      TeacherError: the teacher is missing or unfit for the method (nothing is written).
      WorkdirMismatchError: ``workdir`` holds a run with an incompatible config.
    """
    teacher = load_teacher(config)
    config = student_config(config, teacher)
    workdir = prepare_workdir(workdir, to_json_dict(config))
    source, info = build_source(config)
    student, caps = build_denoiser(config, info), model_caps(config, info)
    method = build_method(config, student, caps.null_label, teacher)
    optimizer = make_optimizer_from(config.train, round_steps=config.distill.get("steps_per_round") or 0)
    teacher_params = teacher.params(teacher.steps[-1])

    def make(teacher_params):
        params = _start_from(init_params(config, info, jax.random.PRNGKey(config.seed)), teacher_params)
        state = create_train_state(params, optimizer, jax.random.fold_in(jax.random.PRNGKey(config.seed), 1))
        return state.replace(extra=method.init_extra(params, teacher_params))

    exp = Experiment(student, caps, source, info, optimizer, make, method.loss_fn, (teacher_params,),
                     method.after_update)
    return run_experiment(config, workdir, exp, progress=progress, devices=devices)


def _start_from(fresh: dict, teacher: dict) -> dict:
    """The student's initial params: the teacher's, plus any new top-level module of the
    student (the w embedding) at its fresh initialisation."""
    shapes = lambda tree: jax.tree.map(jnp.shape, tree)  # noqa: E731
    missing = sorted(set(teacher) - set(fresh))
    mismatched = sorted(k for k in teacher if k in fresh and shapes(teacher[k]) != shapes(fresh[k]))
    if missing or mismatched:
        raise TeacherError(f"the teacher's params do not fit the student network (missing: {missing}, "
                           f"different shapes: {mismatched})")
    return {**fresh, **teacher}
