"""Consistency distillation, LCM-style (Song et al. 2023; Luo et al. 2023).

The student is the consistency function ``f(x, t) = c_skip(t) x + c_out(t) x0_net(x, t)``
with LCM's boundary coefficients on the time index ``tau = T t``:
``c_skip = s_d^2 / ((10 tau)^2 + s_d^2)``, ``c_out = 10 tau / sqrt((10 tau)^2 + s_d^2)``,
``s_d = 0.5``, so ``f(x, 0) = x`` exactly. Training pairs adjacent times of a skip grid
``t_{n+1} > t_n`` (``num_skip`` intervals over the lattice; LCM: k = 20 of T = 1000): the
frozen teacher takes one DDIM step ``t_{n+1} -> t_n`` (optionally under CFG) and the
student at ``t_{n+1}`` matches an EMA target network at ``t_n``. Sampled with the
``consistency`` solver (multistep consistency sampling) on the ``lcm`` grid: LCM's
sampling times, which lie on the training lattice (``sampling/grids.py``).

With ``w_max > 0`` it is LCM's latent consistency distillation (LCD): each sample draws
``w ~ U[w_min, w_max]`` in LCM's convention ``x_c + w (x_c - x_u)``, the teacher's step
runs under CFG at the standard scale ``1 + w`` (LCM ``train_lcm_distill_sd_wds.py:1142,
1207-1208``), and the student and its target are told that scale through a w embedding
(LCM's ``timestep_cond``, ``:1156, 1217``), so sampling with ``guidance = 1 + w`` asks for it.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from diffusion.contract import COMPUTE, Modes
from diffusion.param import Prediction, ddim_renoise, forward_noise
from diffusion.schedules import bcast_right
from distill.method import Method, batch_cond
from distill.registry import Distiller, Teacher, TeacherError, register
from sampling.grids import LCM_SKIP, trailing_time
from sampling.transforms.guidance import Guided

SIGMA_DATA = 0.5  # LCM's boundary-condition constants
TIME_SCALING = 10.0
HUBER_C = 1e-3  # the pseudo-Huber loss's c
HUBER_FORMS = ("elementwise", "per_image")


def consistency_distance(pred: jax.Array, target: jax.Array, loss: str = "l2", huber_form: str = "elementwise"):
    """The consistency loss of ``pred, target: [B, ...]``, a scalar.

    ``l2``: the mean squared error over every element (LCM's ``F.mse_loss(reduction="mean")``).
    ``huber``, ``elementwise`` (LCM, ``train_lcm_distill_sd_wds.py:1234-1236``):
    ``mean(sqrt(d^2 + c^2) - c)`` over every element; ``per_image`` (Kairos before issue 26,
    iCT's norm-based form up to c's scaling): ``mean_b(sqrt(mean_pixels(d^2) + c^2) - c)``;
    ``c = HUBER_C``."""
    if loss not in ("l2", "huber") or huber_form not in HUBER_FORMS:
        raise ValueError(f"unknown consistency loss {loss!r} / huber form {huber_form!r}; expected l2 | huber and "
                         f"one of {HUBER_FORMS}")
    sq = jnp.square(pred - target)
    if loss == "huber" and huber_form == "elementwise":
        return jnp.mean(jnp.sqrt(sq + HUBER_C**2) - HUBER_C)
    per_image = jnp.mean(sq, axis=tuple(range(1, pred.ndim)))  # equal-size images: l2 is the mean of everything
    return jnp.mean(per_image if loss == "l2" else jnp.sqrt(per_image + HUBER_C**2) - HUBER_C)


def boundary_coefficients(t: jax.Array, T: int):
    """``(c_skip, c_out)`` of shape ``t``; ``(1, 0)`` at ``t = 0``."""
    tau = TIME_SCALING * T * jnp.asarray(t, jnp.float32)
    c_skip = SIGMA_DATA**2 / (tau**2 + SIGMA_DATA**2)
    c_out = tau / jnp.sqrt(tau**2 + SIGMA_DATA**2)
    return c_skip, c_out


@struct.dataclass
class ConsistencyFunction:
    """A denoiser whose ``x0`` is the consistency function ``f(x_t, t)`` of the wrapped one
    (and ``eps`` the noise consistent with it). Same call contract as ``Denoiser``."""

    denoiser: Any

    @property
    def schedule(self):
        return self.denoiser.schedule

    def __call__(self, params, x_t, t, cond=None, *, cache=None, step=None, modes: Modes = COMPUTE, rng=None,
                 train: bool = False) -> tuple[Prediction, Any]:
        pred, cache = self.denoiser(params, x_t, t, cond, cache=cache, step=step, modes=modes, rng=rng, train=train)
        t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), x_t.shape[:1]) if jnp.ndim(t) == 0 else t
        c_skip, c_out = boundary_coefficients(t, self.schedule.T)
        x0 = bcast_right(c_skip, x_t) * x_t + bcast_right(c_out, x_t) * pred.x0
        alpha, sigma = self.schedule.alpha_sigma(t)
        eps = (x_t - bcast_right(alpha, x_t) * x0) / bcast_right(jnp.maximum(sigma, 1e-4), x_t)
        return Prediction(x0=x0, eps=eps), cache

    def init_cache(self, params, x_t, cond=None, num_steps=None, modes: Modes = COMPUTE):
        return self.denoiser.init_cache(params, x_t, cond, num_steps, modes)

    def step_plan(self, num_steps: int):
        return self.denoiser.step_plan(num_steps)


@struct.dataclass
class ConsistencyState:
    """``TrainState.extra``: the frozen teacher's params and the EMA target's."""

    teacher: Any
    target: Any


def consistency_distillation(teacher: Any, student: ConsistencyFunction, *, num_skip: int = 50,
                             target_decay: float = 0.95, teacher_guidance: float = 1.0, loss: str = "l2",
                             huber_form: str = "elementwise", w_range: tuple[float, float] = (0.0, 0.0),
                             num_classes: int | None = None, text: bool = False) -> Method:
    """Consistency distillation of ``teacher`` (a denoiser) into ``student``.

    Args:
      teacher: the teacher's denoiser (its params go in ``extra.teacher``).
      student: the consistency function of the same network (starts at the teacher's params);
        w-conditioned (``guidance_embed``) when ``w_range[1] > 0``.
      num_skip: intervals of the skip grid (adjacent pairs ``t_{n+1} > t_n``, ``t_0 = 0``).
      target_decay: EMA decay of the target network (LCM: 0.95).
      teacher_guidance: a fixed CFG scale of the teacher's step (1: the plain conditional
        teacher; the standard scale, LCM's ``w + 1``).
      loss: ``"l2"`` or ``"huber"`` (pseudo-Huber, ``c = HUBER_C``); see :func:`consistency_distance`.
      huber_form: ``"elementwise"`` (LCM) or ``"per_image"`` (Kairos before issue 26).
      w_range: ``(w_min, w_max)`` in LCM's convention; ``w_max > 0``: LCD (module docstring),
        each sample's teacher at the standard scale ``1 + w``, the student and target told it.
      num_classes: class count (labels in the batch) or None.
      text: a text model (``context`` and ``null_context`` in the batch).
    """
    consistency_distance(jnp.zeros(1), jnp.zeros(1), loss, huber_form)  # validates
    schedule, T = student.schedule, student.schedule.T
    if not 1 <= num_skip <= T:
        raise ValueError(f"distill.num_skip must be in [1, {T}], got {num_skip}")
    w_lo, w_hi = w_range
    lcd = w_hi > 0
    if lcd and (teacher_guidance != 1.0 or not 0.0 <= w_lo <= w_hi):
        raise ValueError(f"LCD's w range needs 0 <= distill.w_min <= distill.w_max and distill.teacher_guidance = 1 "
                         f"(one guidance or the other); got w_range={w_range}, teacher_guidance={teacher_guidance}")
    guided = teacher_guidance != 1.0 or lcd
    if guided and num_classes is None and not text:
        raise ValueError("teacher guidance (distill.teacher_guidance != 1 or distill.w_max > 0) needs a class- or "
                         "text-conditional teacher")

    def loss_fn(params, batch, rng, state):
        x0 = batch["image"]
        k_n, k_eps = jax.random.split(rng)
        k_w = jax.random.fold_in(rng, 1)  # LCD's w (the other draws as without it)
        b = x0.shape[0]
        n = jax.random.randint(k_n, (b,), 0, num_skip)  # t_{n+1} = grid point num_skip - n - 1
        t_hi = trailing_time(num_skip - n - 1, num_skip, T)
        t_lo = trailing_time(num_skip - n, num_skip, T)
        eps = jax.random.normal(k_eps, x0.shape, x0.dtype)
        z = forward_noise(schedule, x0, eps, t_hi)
        cond = batch_cond(batch, num_classes)
        if lcd:
            scale = 1.0 + jax.random.uniform(k_w, (b,), minval=w_lo, maxval=w_hi)  # LCM's w, as a standard scale
            student_cond = {**cond, "guidance": scale}
        else:
            scale, student_cond = teacher_guidance, cond
        den = Guided(teacher, scale, null_label=num_classes) if guided else teacher
        z_lo = ddim_renoise(den(state.extra.teacher, z, t_hi, cond)[0], *schedule.alpha_sigma(t_lo))
        target = jax.lax.stop_gradient(student(state.extra.target, z_lo, t_lo, student_cond)[0].x0)
        return consistency_distance(student(params, z, t_hi, student_cond)[0].x0, target, loss, huber_form), {}

    def init_extra(student_params, teacher_params):
        return ConsistencyState(teacher=teacher_params, target=jax.tree.map(jnp.copy, student_params))

    def after_update(state, carry=None):
        target = jax.tree.map(lambda e, p: target_decay * e + (1.0 - target_decay) * p,
                              state.extra.target, state.params)
        return state.replace(extra=state.extra.replace(target=target))

    return Method(loss_fn, init_extra, after_update)


def _check_teacher(settings, teacher: Teacher) -> None:
    guided = settings.teacher_guidance != 1.0 or settings.w_max > 0
    if guided and teacher.null_label is None and not teacher.text:
        raise TeacherError(f"teacher guidance (distill.teacher_guidance={settings.teacher_guidance}, "
                           f"distill.w_max={settings.w_max}) needs a class- or text-conditional teacher")
    if settings.w_max > 0 and teacher.text:
        raise TeacherError(f"{teacher.workdir} is a text-to-image model: LCD's w-conditioned student needs a "
                           "guidance embedding the SD UNet does not have yet; use a fixed distill.teacher_guidance")
    if settings.w_max > 0 and teacher.w_conditioned:
        raise TeacherError(f"{teacher.workdir} is a w-conditioned student; LCD (distill.w_max > 0) needs a plain "
                           "guided teacher")


def _student(config) -> dict:
    """The consistency solver on ``distill.grid`` (``lcm``: LCM's times on the training lattice);
    a w embedding for LCD."""
    d = config.distill
    if d.grid == "lcm" and d.num_skip != LCM_SKIP:
        raise ValueError(f"distill.grid=lcm samples on LCM's {LCM_SKIP}-point lattice, but this student trains on "
                         f"distill.num_skip={d.num_skip} intervals; set distill.num_skip={LCM_SKIP} or "
                         "distill.grid=trailing")
    if d.w_max > 0:
        config.model.guidance_embed = True
    return {"solver": "consistency", "steps": d.sample_steps, "grid": d.grid}


register(Distiller(
    "consistency", "consistency distillation, LCM-style: a consistency function sampled in a few steps",
    defaults={"num_skip": LCM_SKIP,  # skip-grid intervals (LCM's k = 20 of T = 1000)
              "target_decay": 0.95,  # EMA of the target network
              "teacher_guidance": 1.0,  # a fixed CFG scale of the teacher's step (standard scale = LCM's w + 1)
              "w_min": 0.0, "w_max": 0.0,  # LCD: w ~ U[w_min, w_max] in LCM's convention (SD: 5, 15); 0: off
              "loss": "l2",  # l2 | huber
              "huber_form": "elementwise",  # elementwise (LCM) | per_image
              "grid": "lcm",  # the student's sampling grid: lcm (on the training lattice) | any other grid
              "sample_steps": 4},  # sampling steps of the student
    smoke={"num_skip": 10, "grid": "trailing"},
    legacy={"huber_form": "per_image", "grid": "trailing", "w_min": 0.0, "w_max": 0.0},
    check_teacher=_check_teacher,
    student=_student,
    wrap=ConsistencyFunction,
    build=lambda a: consistency_distillation(a.teacher, a.student, num_skip=a.settings.num_skip,
                                             target_decay=a.settings.target_decay,
                                             teacher_guidance=a.settings.teacher_guidance, loss=a.settings.loss,
                                             huber_form=a.settings.huber_form,
                                             w_range=(a.settings.w_min, a.settings.w_max),
                                             num_classes=a.null_label, text=a.text)))
