"""Progressive distillation (Salimans & Ho 2022) and its CFG-aware, w-conditioned
variant (guided distillation as in SnapFusion / Meng et al.).

Round ``r`` trains an ``N = start_steps / 2^(r+1)``-step student: for a student step
``t -> s`` on the trailing grid of ``N`` steps, two deterministic DDIM steps of the
round's teacher (``t -> t' -> s`` on the ``2N`` grid) land on ``z''``; the target is
the ``x0`` that makes **one** DDIM step from ``z_t`` land there:
``x~ = (z'' - (sigma_s / sigma_t) z_t) / (alpha_s - (sigma_s / sigma_t) alpha_t)``.
At each round boundary the teacher becomes the student (its EMA params; with
``train.ema_decay = 0``, as in the paper, the params themselves).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from diffusion.losses import denoising_loss
from diffusion.nn.denoiser import Denoiser
from diffusion.param import ddim_renoise, forward_noise
from diffusion.schedules import bcast_right
from distill.method import Method, batch_cond
from distill.registry import Distiller, Teacher, TeacherError, register
from sampling.grids import trailing_time
from sampling.transforms.guidance import Guided


@struct.dataclass
class RoundState:
    """``TrainState.extra`` of progressive and guided distillation.

    Attributes:
      teacher: the round's teacher params (same structure as the student's).
      round: int32 round index (0-based).
      student_steps: int32 sampling steps the student is being distilled for.
    """

    teacher: Any
    round: jax.Array
    student_steps: jax.Array


def students_steps(start_steps: int, rounds: int) -> list[int]:
    """The student step count of every round: ``start_steps / 2, / 4, ...``."""
    if start_steps < 2 or start_steps & (start_steps - 1):
        raise ValueError(f"distill.start_steps must be a power of two >= 2, got {start_steps}")
    if not 1 <= rounds or start_steps >> rounds < 1:
        raise ValueError(f"{rounds} halving rounds from {start_steps} steps go below 1 step; "
                         f"use at most {start_steps.bit_length() - 1} rounds")
    return [start_steps >> (r + 1) for r in range(rounds)]


def distillation_target(x_t, t, z_s, s, schedule) -> jax.Array:
    """The ``x0`` whose deterministic DDIM step from ``(x_t, t)`` lands on ``(z_s, s)``."""
    alpha_t, sigma_t = schedule.alpha_sigma(t)
    alpha_s, sigma_s = schedule.alpha_sigma(s)
    ratio = sigma_s / sigma_t
    return (z_s - bcast_right(ratio, x_t) * x_t) / bcast_right(alpha_s - ratio * alpha_t, x_t)


def _round_times(key, batch: int, student_steps, T: int):
    """Student step ``t -> s`` and the teacher's midpoint ``t'``, each ``[B]``."""
    j = jax.random.randint(key, (batch,), 0, student_steps)
    two_n = 2 * student_steps
    return tuple(trailing_time(2 * j + k, two_n, T) for k in range(3))


def _make_method(student: Denoiser, start_steps: int, steps_per_round: int, rounds: int, weighting: str,
                 teacher_fn, student_cond_fn) -> Method:
    """Shared by both variants: ``teacher_fn(teacher_params, x, t, batch, w_keys, state) -> Prediction``
    and ``student_cond_fn(batch, draws) -> cond``."""
    students_steps(start_steps, rounds)  # validates
    schedule, T = student.schedule, student.schedule.T

    def loss_fn(params, batch, rng, state):
        x0 = batch["image"]
        k_t, k_eps, k_draw = jax.random.split(rng, 3)
        extra = state.extra
        t, t_mid, s = _round_times(k_t, x0.shape[0], extra.student_steps, T)
        eps = jax.random.normal(k_eps, x0.shape, x0.dtype)
        z = forward_noise(schedule, x0, eps, t)
        draws = student_cond_fn(batch, k_draw)
        teacher = lambda x, tt: teacher_fn(extra.teacher, x, tt, draws, extra)  # noqa: E731
        z_mid = ddim_renoise(teacher(z, t), *schedule.alpha_sigma(t_mid))
        z_s = ddim_renoise(teacher(z_mid, t_mid), *schedule.alpha_sigma(s))
        target = jax.lax.stop_gradient(distillation_target(z, t, z_s, s, schedule))
        pred, _ = student(params, z, t, draws["student"])
        alpha, sigma = schedule.alpha_sigma(t)
        eps_target = (z - bcast_right(alpha, x0) * target) / bcast_right(sigma, x0)
        loss, _ = denoising_loss(pred, target, eps_target, t, schedule, weighting)
        return loss, {"round": extra.round.astype(jnp.float32), "student_steps": extra.student_steps.astype(jnp.float32)}

    def init_extra(student_params, teacher_params):
        del teacher_params  # the student starts as the teacher (guided: plus its zero w embedding)
        return RoundState(teacher=jax.tree.map(jnp.copy, student_params), round=jnp.zeros((), jnp.int32),
                          student_steps=jnp.asarray(start_steps // 2, jnp.int32))

    def after_update(state, carry=None):
        extra = state.extra
        new_round = (state.step % steps_per_round == 0) & (state.step < steps_per_round * rounds)
        teacher = jax.lax.cond(new_round, lambda: state.ema_params, lambda: extra.teacher)  # no per-step select
        r = extra.round + new_round.astype(jnp.int32)
        return state.replace(extra=RoundState(teacher=teacher, round=r,
                                              student_steps=jnp.asarray(start_steps // 2, jnp.int32) >> r))

    return Method(loss_fn, init_extra, after_update)


def progressive_distillation(student: Denoiser, *, start_steps: int, steps_per_round: int, rounds: int,
                             weighting: str = "snr_trunc", num_classes: int | None = None) -> Method:
    """Halves the sampling steps ``rounds`` times from ``start_steps`` (a power of two).

    ``student`` is the teacher's network (the student starts as the teacher, whose
    params the caller puts in both ``params`` and ``extra.teacher``). Batches are
    ``{"image": [B, H, W, C], "label": [B]}`` (labels only when ``num_classes``; a text
    model's ``context`` instead, see :func:`~distill.method.batch_cond`).
    """

    def student_cond(batch, key):
        return {"student": batch_cond(batch, num_classes)}

    def teacher_fn(params, x, t, draws, extra):
        return student(params, x, t, draws["student"])[0]

    return _make_method(student, start_steps, steps_per_round, rounds, weighting, teacher_fn, student_cond)


def guided_distillation(student: Denoiser, *, start_steps: int, steps_per_round: int, rounds: int,
                        num_classes: int | None, w_range: tuple[float, float] = (1.0, 4.0), p_guided: float = 1.0,
                        weighting: str = "snr_trunc") -> Method:
    """Progressive halving of a **w-conditioned** student of a guided teacher.

    ``student`` wraps a UNet with ``guidance_embed=True``; its initial params are the
    teacher's plus a zero-initialised w embedding, so round 0's teacher (those params,
    under classifier-free guidance, a ``[2B]`` call) ignores the embedded w. Each
    sample draws ``w ~ U[w_range]``; with probability ``p_guided`` its target is the
    teacher at ``w``, otherwise the unguided (conditional, ``w = 1``) target. The
    student always receives the drawn ``w``. From round 1 on, the teacher is the
    previous student, called with the target's ``w`` and no CFG.
    """
    lo, hi = w_range
    if not 0.0 <= p_guided <= 1.0 or lo > hi:
        raise ValueError(f"need 0 <= distill.p_guided <= 1 and w_min <= w_max, got p={p_guided}, w_range={w_range}")

    def student_cond(batch, key):
        k_w, k_p = jax.random.split(key)
        b = batch["image"].shape[0]
        w = jax.random.uniform(k_w, (b,), minval=lo, maxval=hi)
        w_target = jnp.where(jax.random.uniform(k_p, (b,)) < p_guided, w, 1.0)
        cond = batch_cond(batch, num_classes)
        return {"student": {**cond, "guidance": w}, "teacher": {**cond, "guidance": w_target}, "w_target": w_target}

    def teacher_fn(params, x, t, draws, extra):
        guided = Guided(student, draws["w_target"], null_label=num_classes)
        cfg = lambda: guided(params, x, t, draws["teacher"])[0]  # noqa: E731
        direct = lambda: student(params, x, t, draws["teacher"])[0]  # noqa: E731
        return jax.lax.cond(extra.round == 0, cfg, direct)

    return _make_method(student, start_steps, steps_per_round, rounds, weighting, teacher_fn, student_cond)


def _needs_v_or_x0(settings, teacher: Teacher) -> None:
    if teacher.pred_type == "eps":
        raise TeacherError(
            f"{settings.method} distillation needs a v- or x0-prediction teacher, but {teacher.workdir} predicts eps: "
            "its x0 = (x_t - sigma eps) / alpha blows up at t = 1, where a few-step student starts. "
            "Train one with `python -m launch.train --config configs/digits_v.py --workdir runs/digits_v`.")


def _check_guided_teacher(settings, teacher: Teacher) -> None:
    _needs_v_or_x0(settings, teacher)
    if teacher.text:
        raise TeacherError(f"{teacher.workdir} is a text-to-image model, and guided distillation's w-conditioned "
                           "student needs a guidance embedding the SD UNet does not have yet; distil it with "
                           "distill.method=progressive, or consistency with distill.teacher_guidance")
    if teacher.null_label is None or not teacher.cond_drop_prob > 0:
        raise TeacherError(f"guided distillation needs a class-conditional teacher trained with label dropout "
                           f"(diffusion.cond_drop_prob > 0); {teacher.workdir} has num_classes={teacher.null_label}, "
                           f"cond_drop_prob={teacher.cond_drop_prob}")
    if teacher.w_conditioned:
        raise TeacherError(f"{teacher.workdir} is already a w-conditioned student")


def _rounds_student(config) -> dict:
    """Halving rounds: one kept checkpoint per round, the LR restarting each round."""
    d = config.distill
    rounds = students_steps(d.start_steps, d.rounds)
    config.train.num_steps = d.steps_per_round * len(rounds)
    config.train.keep_every = d.steps_per_round
    if d.steps_per_round % config.train.ckpt_every:
        raise ValueError(f"train.ckpt_every={config.train.ckpt_every} must divide distill.steps_per_round="
                         f"{d.steps_per_round} (a checkpoint at the end of every round)")
    config.train.lr_schedule = "round_linear"
    return {"solver": "ddim", "steps": rounds[-1]}


def _guided_student(config) -> dict:
    config.model.guidance_embed = True
    return _rounds_student(config)


ROUNDS = {"weighting": "snr_trunc",  # the x0 loss weighting: snr_trunc (max(SNR, 1) x0-MSE) | v | x0
          "start_steps": 128,  # the first teacher's steps (a power of two)
          "rounds": 7,  # halvings: 128 -> 1 step
          "steps_per_round": 300}
ROUNDS_SMOKE = {"start_steps": 8, "rounds": 2, "steps_per_round": 4}

register(Distiller(
    "progressive", "progressive distillation (Salimans & Ho): halve the sampling steps each round",
    defaults=ROUNDS, smoke=ROUNDS_SMOKE, check_teacher=_needs_v_or_x0, student=_rounds_student,
    build=lambda a: progressive_distillation(a.student, start_steps=a.settings.start_steps,
                                             steps_per_round=a.settings.steps_per_round, rounds=a.settings.rounds,
                                             weighting=a.settings.weighting, num_classes=a.null_label)))

register(Distiller(
    "guided", "CFG-aware progressive distillation into a w-conditioned student (SnapFusion / Meng et al.)",
    defaults={**ROUNDS,
              "w_min": 1.0, "w_max": 4.0,  # w ~ U[w_min, w_max]
              "p_guided": 1.0},  # probability of the guided (vs the unguided w = 1) target
    smoke=ROUNDS_SMOKE, check_teacher=_check_guided_teacher, student=_guided_student,
    build=lambda a: guided_distillation(a.student, start_steps=a.settings.start_steps,
                                        steps_per_round=a.settings.steps_per_round, rounds=a.settings.rounds,
                                        num_classes=a.null_label, w_range=(a.settings.w_min, a.settings.w_max),
                                        p_guided=a.settings.p_guided, weighting=a.settings.weighting)))
