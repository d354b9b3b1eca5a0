"""Consistency distillation, LCM-style (Song et al. 2023; Luo et al. 2023).

The student is the consistency function ``f(x, t) = c_skip(t) x + c_out(t) x0_net(x, t)``
with LCM's boundary coefficients on the time index ``tau = T t``:
``c_skip = s_d^2 / ((10 tau)^2 + s_d^2)``, ``c_out = 10 tau / sqrt((10 tau)^2 + s_d^2)``,
``s_d = 0.5``, so ``f(x, 0) = x`` exactly. Training pairs adjacent times of a skip grid
``t_{n+1} > t_n`` (``num_skip`` intervals over the lattice; LCM: k = 20 of T = 1000): the
frozen teacher takes one DDIM step ``t_{n+1} -> t_n`` (optionally under CFG) and the
student at ``t_{n+1}`` matches an EMA target network at ``t_n``. Sampled with the
``consistency`` solver (multistep consistency sampling).
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
from sampling.grids import trailing_time
from sampling.transforms.guidance import Guided

SIGMA_DATA = 0.5  # LCM's boundary-condition constants
TIME_SCALING = 10.0
HUBER_C = 1e-3  # the pseudo-Huber loss's c


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
                             num_classes: int | None = None, text: bool = False) -> Method:
    """Consistency distillation of ``teacher`` (a denoiser) into ``student``.

    Args:
      teacher: the teacher's denoiser (its params go in ``extra.teacher``).
      student: the consistency function of the same network (starts at the teacher's params).
      num_skip: intervals of the skip grid (adjacent pairs ``t_{n+1} > t_n``, ``t_0 = 0``).
      target_decay: EMA decay of the target network (LCM: 0.95).
      teacher_guidance: CFG scale of the teacher's step (1: the plain conditional teacher).
      loss: ``"l2"`` (mean squared error) or ``"huber"`` (``sqrt(mse + c^2) - c`` per image,
        ``c = HUBER_C``).
      num_classes: class count (labels in the batch) or None.
      text: a text model (``context`` and ``null_context`` in the batch).
    """
    if loss not in ("l2", "huber"):
        raise ValueError(f"unknown consistency loss {loss!r}; expected 'l2' or 'huber'")
    schedule, T = student.schedule, student.schedule.T
    if not 1 <= num_skip <= T:
        raise ValueError(f"distill.num_skip must be in [1, {T}], got {num_skip}")
    guided = teacher_guidance != 1.0
    if guided and num_classes is None and not text:
        raise ValueError("distill.teacher_guidance != 1 needs a class- or text-conditional teacher")

    def loss_fn(params, batch, rng, state):
        x0 = batch["image"]
        k_n, k_eps = jax.random.split(rng)
        b = x0.shape[0]
        n = jax.random.randint(k_n, (b,), 0, num_skip)  # t_{n+1} = grid point num_skip - n - 1
        t_hi = trailing_time(num_skip - n - 1, num_skip, T)
        t_lo = trailing_time(num_skip - n, num_skip, T)
        eps = jax.random.normal(k_eps, x0.shape, x0.dtype)
        z = forward_noise(schedule, x0, eps, t_hi)
        cond = batch_cond(batch, num_classes)
        den = Guided(teacher, teacher_guidance, null_label=num_classes) if guided else teacher
        z_lo = ddim_renoise(den(state.extra.teacher, z, t_hi, cond)[0], *schedule.alpha_sigma(t_lo))
        target = jax.lax.stop_gradient(student(state.extra.target, z_lo, t_lo, cond)[0].x0)
        diff = jnp.mean(jnp.square(student(params, z, t_hi, cond)[0].x0 - target), axis=tuple(range(1, x0.ndim)))
        per_image = diff if loss == "l2" else jnp.sqrt(diff + HUBER_C**2) - HUBER_C
        return jnp.mean(per_image), {}

    def init_extra(student_params, teacher_params):
        return ConsistencyState(teacher=teacher_params, target=jax.tree.map(jnp.copy, student_params))

    def after_update(state, carry=None):
        target = jax.tree.map(lambda e, p: target_decay * e + (1.0 - target_decay) * p,
                              state.extra.target, state.params)
        return state.replace(extra=state.extra.replace(target=target))

    return Method(loss_fn, init_extra, after_update)


def _check_teacher(settings, teacher: Teacher) -> None:
    if settings.teacher_guidance != 1.0 and teacher.null_label is None and not teacher.text:
        raise TeacherError(f"distill.teacher_guidance={settings.teacher_guidance} needs a class- or text-conditional "
                           "teacher")


register(Distiller(
    "consistency", "consistency distillation, LCM-style: a consistency function sampled in a few steps",
    defaults={"num_skip": 50,  # skip-grid intervals (LCM's k = 20 of T = 1000)
              "target_decay": 0.95,  # EMA of the target network
              "teacher_guidance": 1.0,  # CFG scale of the teacher's step
              "loss": "l2",  # l2 | huber
              "sample_steps": 4},  # sampling steps of the student
    smoke={"num_skip": 10},
    check_teacher=_check_teacher,
    student=lambda config: {"solver": "consistency", "steps": config.distill.sample_steps},
    wrap=ConsistencyFunction,
    build=lambda a: consistency_distillation(a.teacher, a.student, num_skip=a.settings.num_skip,
                                             target_decay=a.settings.target_decay,
                                             teacher_guidance=a.settings.teacher_guidance, loss=a.settings.loss,
                                             num_classes=a.null_label, text=a.text)))
