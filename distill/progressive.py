"""Progressive distillation (Salimans & Ho 2022) and guided distillation: Meng et al.'s
w-conditioned progressive distillation ("On Distillation of Guided Diffusion Models"),
with SnapFusion's CFG-aware loss as a second student mode (docs/design/distillation.md).

Round ``r`` trains an ``N = start_steps / 2^(r+1)``-step student: for a student step
``t -> s`` on the trailing grid of ``N`` steps, two deterministic DDIM steps of the
round's teacher (``t -> t' -> s`` on the ``2N`` grid) land on ``z''``; the target is
the ``x0`` that makes **one** DDIM step from ``z_t`` land there:
``x~ = (z'' - (sigma_s / sigma_t) z_t) / (alpha_s - (sigma_s / sigma_t) alpha_t)``.
At each round boundary the teacher becomes the student (its EMA params; with
``train.ema_decay = 0``, as in the paper, the params themselves) and, with
``reset_optimizer`` (the reference's choice), Adam starts afresh: the reference builds a
new optimizer at every halving (``diffusion_distillation.ipynb`` cell ``1Qnjl_r36jdo``,
"reset student optimizer for next distillation iteration").
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from diffusion.losses import denoising_loss
from diffusion.nn.denoiser import Denoiser
from diffusion.param import Prediction, ddim_renoise, forward_noise
from diffusion.schedules import bcast_right
from distill.method import Method, batch_cond
from distill.registry import Distiller, Teacher, TeacherError, register
from sampling.grids import trailing_time
from sampling.transforms.guidance import Guided

GUIDED_STUDENTS = ("embed", "cfg")  # Meng et al.'s w-conditioned student | SnapFusion's w-free student under CFG
VANILLA_W = ("target", "drawn")  # what an embed student is told on a vanilla (w = 1) sample


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


def reset_adam_at(new_round: jax.Array, opt_state: Any) -> Any:
    """``opt_state`` with every leaf zeroed where ``new_round`` (a bool scalar), else as is.

    Zeros are the initial state of ``diffusion.train.optim.make_optimizer``'s chain
    (clipping, AdamW's ``count``, ``mu``, ``nu``, the schedule's ``count``), so the next
    update is a fresh Adam's first step: the reference's new optimizer per round."""
    return jax.lax.cond(new_round, lambda: jax.tree.map(jnp.zeros_like, opt_state), lambda: opt_state)


def _plain_student(student):
    def predict(params, z, t, draws):
        pred, _ = student(params, z, t, draws["student"])
        return pred, pred

    return predict


def _make_method(student: Denoiser, start_steps: int, steps_per_round: int, rounds: int, weighting: str,
                 teacher_fn, student_cond_fn, *, student_fn=None, reset_optimizer: bool = True,
                 ori_weight: float = 0.0) -> Method:
    """Shared by every variant: ``teacher_fn(teacher_params, x, t, draws, extra) -> Prediction``,
    ``student_cond_fn(batch, key) -> draws`` (``draws["student"]``: the student's cond) and
    ``student_fn(params, z, t, draws) -> (prediction in the loss, plain conditional prediction)``
    (default: the student called with ``draws["student"]``). ``ori_weight`` adds that times the
    plain prediction's v-MSE against the data (SnapFusion's ``gamma L_ori``)."""
    students_steps(start_steps, rounds)  # validates
    schedule, T = student.schedule, student.schedule.T
    student_fn = student_fn or _plain_student(student)

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
        pred, plain = student_fn(params, z, t, draws)
        alpha, sigma = schedule.alpha_sigma(t)
        eps_target = (z - bcast_right(alpha, x0) * target) / bcast_right(sigma, x0)
        loss, _ = denoising_loss(pred, target, eps_target, t, schedule, weighting)
        aux = {"round": extra.round.astype(jnp.float32), "student_steps": extra.student_steps.astype(jnp.float32)}
        if ori_weight:
            ori, _ = denoising_loss(plain, x0, eps, t, schedule, "v")
            loss, aux = loss + ori_weight * ori, {**aux, "loss_ori": ori}
        return loss, aux

    def init_extra(student_params, teacher_params):
        del teacher_params  # the student starts as the teacher (guided: plus its zero w embedding)
        return RoundState(teacher=jax.tree.map(jnp.copy, student_params), round=jnp.zeros((), jnp.int32),
                          student_steps=jnp.asarray(start_steps // 2, jnp.int32))

    def after_update(state, carry=None):
        extra = state.extra
        new_round = (state.step % steps_per_round == 0) & (state.step < steps_per_round * rounds)
        teacher = jax.lax.cond(new_round, lambda: state.ema_params, lambda: extra.teacher)  # no per-step select
        r = extra.round + new_round.astype(jnp.int32)
        opt_state = reset_adam_at(new_round, state.opt_state) if reset_optimizer else state.opt_state
        return state.replace(opt_state=opt_state, extra=RoundState(
            teacher=teacher, round=r, student_steps=jnp.asarray(start_steps // 2, jnp.int32) >> r))

    return Method(loss_fn, init_extra, after_update)


def progressive_distillation(student: Denoiser, *, start_steps: int, steps_per_round: int, rounds: int,
                             weighting: str = "snr_trunc", num_classes: int | None = None,
                             reset_optimizer: bool = True) -> Method:
    """Halves the sampling steps ``rounds`` times from ``start_steps`` (a power of two).

    ``student`` is the teacher's network (the student starts as the teacher, whose
    params the caller puts in both ``params`` and ``extra.teacher``). Batches are
    ``{"image": [B, H, W, C], "label": [B]}`` (labels only when ``num_classes``; a text
    model's ``context`` instead, see :func:`~distill.method.batch_cond`).
    ``reset_optimizer``: zero the optimizer state after the step that ends a round (the
    reference's new optimizer per round); False keeps Adam's moments across rounds (Kairos
    before issue 26).
    """

    def student_cond(batch, key):
        return {"student": batch_cond(batch, num_classes)}

    def teacher_fn(params, x, t, draws, extra):
        return student(params, x, t, draws["student"])[0]

    return _make_method(student, start_steps, steps_per_round, rounds, weighting, teacher_fn, student_cond,
                        reset_optimizer=reset_optimizer)


def guided_distillation(student: Denoiser, *, start_steps: int, steps_per_round: int, rounds: int,
                        num_classes: int | None, w_range: tuple[float, float] = (1.0, 5.0), p_guided: float = 1.0,
                        weighting: str = "snr_trunc", vanilla_w: str = "target", mode: str = "embed",
                        ori_weight: float = 0.0, reset_optimizer: bool = True) -> Method:
    """Progressive halving of a guided teacher, in one of two student modes.

    Each sample draws ``w ~ U[w_range]`` (the scale convention ``x_u + w (x_c - x_u)`` of
    :class:`~sampling.transforms.guidance.Guided`) and, with probability ``p_guided``, is a
    **guided** sample (its target is the teacher under CFG at ``w``); otherwise it is a
    **vanilla** sample, whose target is the plain conditional teacher (``w_target = 1``).

    ``mode="embed"`` (Meng et al., the default): ``student`` wraps a UNet with
    ``guidance_embed=True``; its initial params are the teacher's plus a zero-initialised w
    embedding, so round 0's teacher (those params, under CFG, a ``[2B]`` call) ignores the
    embedded w. The student is told ``w_target`` (``vanilla_w="target"``: its w and its
    target's always agree, as in Meng's code) or the drawn ``w`` (``"drawn"``: Kairos before
    issue 26, whose mean target is CFG at ``1 + p (w - 1)``). From round 1 on, the teacher
    is the previous student called with ``w_target`` and no CFG. Meng et al. first train a
    separate stage-1 model that matches the CFG teacher in one call; here round 0 distils
    two exact CFG DDIM steps instead (declared in docs/design/fidelity.md).

    ``mode="cfg"`` (SnapFusion's CFG-aware loss): a w-free student (the teacher's network)
    whose prediction is CFG applied to its own conditional and unconditional outputs at
    ``w_target`` (one ``[2B]`` call; at ``w_target = 1`` the conditional output); every
    round's teacher is the round's teacher params under CFG at ``w_target``. SnapFusion's
    settings: ``p_guided = 0.1``, ``w ~ U[2, 14]``, ``ori_weight = 0.2`` (``gamma``: plus
    ``gamma`` times the student's conditional v-MSE against the data; the paper's dynamic
    rescaling of gamma is unspecified and not done).
    """
    lo, hi = w_range
    if not 0.0 <= p_guided <= 1.0 or lo > hi:
        raise ValueError(f"need 0 <= distill.p_guided <= 1 and w_min <= w_max, got p={p_guided}, w_range={w_range}")
    if mode not in GUIDED_STUDENTS or vanilla_w not in VANILLA_W:
        raise ValueError(f"distill.guided_student must be one of {GUIDED_STUDENTS} and distill.vanilla_w one of "
                         f"{VANILLA_W}; got {mode!r}, {vanilla_w!r}")
    if ori_weight and mode != "cfg":
        raise ValueError("distill.ori_weight (SnapFusion's gamma L_ori) is a term of guided_student=cfg; "
                         f"set it to 0 for {mode!r}")
    if num_classes is None:
        raise ValueError("guided distillation needs a class-conditional teacher (num_classes)")

    def student_cond(batch, key):
        return guided_draws(key, batch, w_range=w_range, p_guided=p_guided, num_classes=num_classes,
                            vanilla_w=vanilla_w, embed=mode == "embed")

    if mode == "cfg":
        def teacher_fn(params, x, t, draws, extra):
            return Guided(student, draws["w_target"], null_label=num_classes)(params, x, t, draws["teacher"])[0]

        def student_fn(params, z, t, draws):
            return cfg_and_conditional(student, params, z, t, draws["student"], draws["w_target"], num_classes)
    else:
        def teacher_fn(params, x, t, draws, extra):
            guided = Guided(student, draws["w_target"], null_label=num_classes)
            cfg = lambda: guided(params, x, t, draws["teacher"])[0]  # noqa: E731
            direct = lambda: student(params, x, t, draws["teacher"])[0]  # noqa: E731
            return jax.lax.cond(extra.round == 0, cfg, direct)

        student_fn = None

    return _make_method(student, start_steps, steps_per_round, rounds, weighting, teacher_fn, student_cond,
                        student_fn=student_fn, reset_optimizer=reset_optimizer, ori_weight=ori_weight)


def guided_draws(key, batch: dict, *, w_range: tuple[float, float], p_guided: float, num_classes: int,
                 vanilla_w: str = "target", embed: bool = True) -> dict:
    """Per sample of ``batch`` (``B``): ``w ~ U[w_range]``, guided with probability ``p_guided``.

    Returns ``{"w": [B], "w_target": [B]`` (``w`` on guided samples, 1 on vanilla ones)``,
    "teacher": cond, "student": cond}``. With ``embed`` both conds carry ``"guidance"``: the
    teacher's ``w_target``, the student's ``w_target`` (``vanilla_w="target"``) or ``w``
    (``"drawn"``); otherwise neither does (a w-free student under CFG)."""
    k_w, k_p = jax.random.split(key)
    b = batch["image"].shape[0]
    lo, hi = w_range
    w = jax.random.uniform(k_w, (b,), minval=lo, maxval=hi)
    w_target = jnp.where(jax.random.uniform(k_p, (b,)) < p_guided, w, 1.0)
    cond = batch_cond(batch, num_classes)
    if not embed:
        return {"w": w, "w_target": w_target, "teacher": cond, "student": cond}
    told = w_target if vanilla_w == "target" else w
    return {"w": w, "w_target": w_target, "teacher": {**cond, "guidance": w_target},
            "student": {**cond, "guidance": told}}


def cfg_and_conditional(student, params, z, t, cond: dict, w: jax.Array, null_label: int):
    """``(CFG prediction at w, conditional prediction)`` of a w-free class-conditional
    ``student`` from one ``[2B]`` call: ``x_u + w (x_c - x_u)`` for ``x0`` and ``eps``
    (:class:`~sampling.transforms.guidance.Guided`'s combination). ``w: [B]``."""
    b = z.shape[0]
    both_cond = {k: jnp.concatenate([v, v]) for k, v in cond.items()}
    both_cond["label"] = jnp.concatenate([cond["label"], jnp.full_like(cond["label"], null_label)])
    both, _ = student(params, jnp.concatenate([z, z]), jnp.concatenate([t, t]), both_cond)
    ww = bcast_right(w, z)
    mix = lambda y: y[b:] + ww * (y[:b] - y[b:])  # noqa: E731
    return Prediction(x0=mix(both.x0), eps=mix(both.eps)), Prediction(x0=both.x0[:b], eps=both.eps[:b])


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
    config.model.guidance_embed = config.distill.guided_student == "embed"
    return _rounds_student(config)


ROUNDS = {"weighting": "snr_trunc",  # the x0 loss weighting: snr_trunc (max(SNR, 1) x0-MSE) | v | x0
          "start_steps": 128,  # the first teacher's steps (a power of two)
          "rounds": 7,  # halvings: 128 -> 1 step
          "steps_per_round": 300,
          "reset_optimizer": True}  # a fresh Adam at every round (the reference); False: kept across rounds
ROUNDS_SMOKE = {"start_steps": 8, "rounds": 2, "steps_per_round": 4}
# what a config.json from before issue 26 lacks: the settings those runs trained with
ROUNDS_LEGACY = {"reset_optimizer": False}
GUIDED_LEGACY = {**ROUNDS_LEGACY, "guided_student": "embed", "vanilla_w": "drawn", "ori_weight": 0.0}

register(Distiller(
    "progressive", "progressive distillation (Salimans & Ho): halve the sampling steps each round",
    defaults=ROUNDS, smoke=ROUNDS_SMOKE, legacy=ROUNDS_LEGACY, check_teacher=_needs_v_or_x0, student=_rounds_student,
    build=lambda a: progressive_distillation(a.student, start_steps=a.settings.start_steps,
                                             steps_per_round=a.settings.steps_per_round, rounds=a.settings.rounds,
                                             weighting=a.settings.weighting, num_classes=a.null_label,
                                             reset_optimizer=a.settings.reset_optimizer)))

register(Distiller(
    "guided", "guided distillation: Meng et al.'s w-conditioned progressive distillation (guided_student=embed) "
              "or SnapFusion's CFG-aware loss on a w-free student (guided_student=cfg)",
    defaults={**ROUNDS,
              "guided_student": "embed",  # embed (Meng et al.: a w-conditioned student) | cfg (SnapFusion)
              "w_min": 1.0, "w_max": 5.0,  # w ~ U[w_min, w_max], scale x_u + w (x_c - x_u): Meng's [0, 4] is [1, 5]
              "p_guided": 1.0,  # probability of a guided sample (else vanilla, w = 1); SnapFusion: 0.1
              "vanilla_w": "target",  # embed: the student is told w_target (target) or the drawn w (drawn, Kairos' old)
              "ori_weight": 0.0},  # cfg: SnapFusion's gamma (0.2) on the student's v-MSE against the data
    smoke=ROUNDS_SMOKE, legacy=GUIDED_LEGACY, check_teacher=_check_guided_teacher, student=_guided_student,
    build=lambda a: guided_distillation(a.student, start_steps=a.settings.start_steps,
                                        steps_per_round=a.settings.steps_per_round, rounds=a.settings.rounds,
                                        num_classes=a.null_label, w_range=(a.settings.w_min, a.settings.w_max),
                                        p_guided=a.settings.p_guided, weighting=a.settings.weighting,
                                        vanilla_w=a.settings.vanilla_w, mode=a.settings.guided_student,
                                        ori_weight=a.settings.ori_weight,
                                        reset_optimizer=a.settings.reset_optimizer)))
