"""TiUE (Li et al., CVPR 2025): a loop-free student with a time-independent shared encoder,
distilled data-free by variational score distillation (METHODS.md §4, as coded in
``sen-mao/Loopfree`` on SwiftBrush).

The student is the teacher's network sampled loop-free (``sampling/loopfree.py``): one
encoder call on ``x_T`` at the first grid time, one decoder call over the ``K`` grid times,
``K`` DDIM updates. Per step, from a batch's conditions only (no images):

1. ``x0_hat, eps_1..K = loopfree(x_T, c)``;
2. ``x_t = alpha_t sg(x0_hat) + sigma_t eps``, ``t = n / T`` with ``n`` uniform on the
   integers of ``[t_min T, t_max T]`` (the code's 20..980);
   ``g = sigma_t^2 (eps_teacher^w(x_t) - eps_fake^w(x_t))`` (both under CFG scale ``w``);
   ``L = 0.5 mean((x0_hat - sg(x0_hat - g))^2) + kl_weight * noise_kl(eps_1..K)``;
3. the fake score (a full copy of the teacher: see ``docs/design/tiue.md``) takes its own
   optimizer step on ``mean(alpha_t^2 (eps_fake(x_t, c') - eps)^2)`` at fresh ``t``, ``eps`` on
   ``sg(x0_hat)``, ``c'`` the null condition with probability ``fake_cond_drop``.

``objective = "regress"`` is the data-free regression baseline: the student's ``x0_hat``
regresses onto the guided teacher's own ``K``-step DDIM sample from the same ``x_T``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from diffusion.param import forward_noise
from diffusion.schedules import bcast_right
from distill.method import Method, batch_cond
from distill.registry import Distiller, Teacher, TeacherError, register
from sampling.grids import make_grid
from sampling.loop import sample
from sampling.loopfree import check_split, loopfree_chain
from sampling.solvers.ddim import DDIM
from sampling.transforms.guidance import Guided

OBJECTIVES = ("vsd", "regress")


def vsd_loss(x0_hat: jax.Array, teacher_eps: jax.Array, fake_eps: jax.Array, sigma: jax.Array) -> jax.Array:
    """SwiftBrush's surrogate: ``0.5 mean((x0_hat - sg(x0_hat - g))^2)`` with
    ``g = sigma^2 (teacher_eps - fake_eps)``; its gradient in ``x0_hat`` is ``g / size``."""
    g = jax.lax.stop_gradient(bcast_right(sigma**2, x0_hat) * (teacher_eps - fake_eps))
    return 0.5 * jnp.mean(jnp.square(x0_hat - jax.lax.stop_gradient(x0_hat - g)))


def noise_kl(eps_maps: jax.Array) -> jax.Array:
    """TiUE's regulariser on the ``K`` predicted noise maps ``[K, B, ...]``: for each map
    ``n``, with ``mu_n`` and ``v_n`` the mean and variance of its elements,
    ``0.5 (mu_n^2 + v_n - 1 - log v_n)`` (the KL of ``N(mu_n, v_n)`` from ``N(0, 1)``),
    summed over the ``K`` maps and averaged over the batch."""
    flat = eps_maps.reshape(*eps_maps.shape[:2], -1)
    mu, var = jnp.mean(flat, axis=-1), jnp.var(flat, axis=-1)
    kl = 0.5 * (mu**2 + var - 1.0 - jnp.log(jnp.maximum(var, 1e-12)))
    return jnp.mean(jnp.sum(kl, axis=0))


def null_cond(cond: dict, null_label: int | None) -> dict:
    """The unconditional version of a batch's conditions (label -> null label, context ->
    the empty prompt's)."""
    out = dict(cond)
    if "context" in out:
        out["context"] = out["null_context"]
    if "label" in out:
        out["label"] = jnp.full_like(out["label"], null_label)
    return out


def drop_cond(cond: dict, null_label: int | None, drop: jax.Array) -> dict:
    """``cond`` with the samples where ``drop [B]`` holds made unconditional."""
    null = null_cond(cond, null_label)
    return {k: jnp.where(bcast_right(drop, v), null[k], v) if k in ("label", "context") else v for k, v in cond.items()}


def lattice_times(key: jax.Array, b: int, lo: float, hi: float, T: int) -> jax.Array:
    """``[B]`` times ``n / T``, ``n`` uniform on the integers of ``[lo T, hi T]``."""
    n = jax.random.randint(key, (b,), round(lo * T), round(hi * T) + 1)
    return n.astype(jnp.float32) / T


@struct.dataclass
class TiUEState:
    """``TrainState.extra``: the frozen teacher, the fake score's params and optimizer state."""

    teacher: Any
    fake: Any
    fake_opt: Any


def tiue_distillation(teacher: Any, student: Any, *, steps: int = 4, guidance: float = 3.0, kl_weight: float = 0.1,
                      fake_lr: float = 1e-3, t_min: float = 0.02, t_max: float = 0.98, fake_cond_drop: float = 0.1,
                      objective: str = "vsd", num_classes: int | None = None, text: bool = False) -> Method:
    """TiUE's distillation of ``teacher`` into a loop-free ``student`` of ``steps`` K steps
    (module docstring). ``guidance``: the CFG scale of the teacher and the fake score
    (1: none); ``num_classes``: the null label of a class-conditional model."""
    check_split(student)
    if getattr(student.module, "temporal", False):
        raise ValueError("TiUE's loop-free student is an image model; this teacher is a video UNet")
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown distill.objective {objective!r}; expected one of {OBJECTIVES}")
    if steps < 1:
        raise ValueError(f"distill.steps must be >= 1, got {steps}")
    if not 0.0 < t_min < t_max <= 1.0:
        raise ValueError(f"need 0 < distill.t_min < distill.t_max <= 1, got {t_min} and {t_max}")
    if not (kl_weight >= 0 and fake_lr > 0 and 0.0 <= fake_cond_drop <= 1.0 and guidance >= 0):  # NaN fails too
        raise ValueError("distill.kl_weight must be >= 0, distill.fake_lr > 0, distill.fake_cond_drop in [0, 1] and "
                         f"distill.guidance >= 0; got {kl_weight}, {fake_lr}, {fake_cond_drop} and {guidance}")
    conditional = num_classes is not None or text
    if guidance != 1.0 and not conditional:
        raise ValueError("distill.guidance != 1 needs a class- or text-conditional teacher")
    schedule = student.schedule
    grid = make_grid("trailing", steps, schedule)
    guided = (lambda den: Guided(den, guidance, null_label=num_classes if num_classes is not None else -1)
              if guidance != 1.0 else den)
    fake_optimizer = optax.adam(fake_lr)

    def loss_fn(params, batch, rng, state):
        k_T, k_t, k_eps, k_next = jax.random.split(rng, 4)
        shape = batch["image"].shape  # only its shape: the method is data-free
        cond = batch_cond(batch, num_classes)
        x_T = jax.random.normal(k_T, shape)
        x0_hat, eps_maps = loopfree_chain(student, params, grid, x_T, cond)
        aux = {"noise_kl": noise_kl(eps_maps)}
        if objective == "regress":
            target = sample(guided(teacher), state.extra.teacher, DDIM(schedule), grid, x_T, cond)
            loss = jnp.mean(jnp.square(x0_hat - jax.lax.stop_gradient(target)))
        else:
            t = lattice_times(k_t, shape[0], t_min, t_max, schedule.T)
            x_t = forward_noise(schedule, jax.lax.stop_gradient(x0_hat), jax.random.normal(k_eps, shape), t)
            teacher_eps = guided(teacher)(state.extra.teacher, x_t, t, cond)[0].eps
            fake_eps = guided(teacher)(state.extra.fake, x_t, t, cond)[0].eps
            loss = vsd_loss(x0_hat, teacher_eps, fake_eps, schedule.alpha_sigma(t)[1])
        aux["distill_loss"] = loss
        if kl_weight:
            loss = loss + kl_weight * aux["noise_kl"]
        aux["carry"] = {"x0": jax.lax.stop_gradient(x0_hat), "cond": cond, "key": k_next}
        return loss, aux

    def fake_loss(fake_params, x0, cond, key):
        k_t, k_eps, k_drop = jax.random.split(key, 3)
        b = x0.shape[0]
        t = lattice_times(k_t, b, 1.0 / schedule.T, 1.0, schedule.T)
        eps = jax.random.normal(k_eps, x0.shape)
        alpha = schedule.alpha_sigma(t)[0]
        c = drop_cond(cond, num_classes, jax.random.bernoulli(k_drop, fake_cond_drop, (b,))) if conditional else cond
        pred = teacher(fake_params, forward_noise(schedule, x0, eps, t), t, c)[0].eps
        return jnp.mean(bcast_right(alpha**2, x0) * jnp.square(pred - eps))

    def after_update(state, carry=None):
        if objective == "regress" or carry is None:
            return state
        extra = state.extra
        loss, grads = jax.value_and_grad(fake_loss)(extra.fake, carry["x0"], carry["cond"], carry["key"])
        updates, opt = fake_optimizer.update(grads, extra.fake_opt, extra.fake)
        finite = jnp.isfinite(loss) & jnp.isfinite(optax.global_norm(grads))
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)  # noqa: E731
        return state.replace(extra=extra.replace(fake=keep(optax.apply_updates(extra.fake, updates), extra.fake),
                                                 fake_opt=keep(opt, extra.fake_opt)))

    def init_extra(student_params, teacher_params):
        fake = jax.tree.map(jnp.copy, teacher_params)
        return TiUEState(teacher=teacher_params, fake=fake, fake_opt=fake_optimizer.init(fake))

    return Method(loss_fn, init_extra, after_update)


def _check_teacher(settings, teacher: Teacher) -> None:
    if teacher.w_conditioned:
        raise TeacherError("TiUE distils a plain teacher; this one is a w-conditioned (guided-distillation) student")
    if settings.guidance != 1.0 and teacher.null_label is None and not teacher.text:
        raise TeacherError(f"distill.guidance={settings.guidance} needs a class- or text-conditional teacher "
                           "(set distill.guidance=1 for an unconditional one)")
    if settings.guidance != 1.0 and teacher.cond_drop_prob <= 0 and not teacher.text:
        raise TeacherError("distill.guidance != 1 needs a teacher trained with label dropout "
                           "(diffusion.cond_drop_prob > 0): it has no unconditional branch")


register(Distiller(
    "tiue", "TiUE: a loop-free student (one encoder pass, a K-batched decoder) distilled by VSD with a fake score",
    defaults={"steps": 4,  # K: the student's grid (trailing) and decoder batch
              "guidance": 3.0,  # CFG scale of the teacher and the fake score (the paper: 4.5 on SD)
              "kl_weight": 0.1,  # the noise-map KL regulariser (0: off)
              "fake_lr": 1e-3,  # the fake score's Adam learning rate
              "t_min": 0.02, "t_max": 0.98,  # VSD's t ~ U[t_min, t_max] (the code's 20..980 of 1000)
              "fake_cond_drop": 0.1,  # the fake score's condition dropout
              "objective": "vsd"},  # vsd | regress (onto the teacher's K-step DDIM sample: the baseline)
    smoke={"steps": 2},
    check_teacher=_check_teacher,
    student=lambda config: {"solver": "ddim", "steps": config.distill.steps, "loopfree": "on"},
    build=lambda a: tiue_distillation(a.teacher, a.student, steps=a.settings.steps, guidance=a.settings.guidance,
                                      kl_weight=a.settings.kl_weight, fake_lr=a.settings.fake_lr,
                                      t_min=a.settings.t_min, t_max=a.settings.t_max,
                                      fake_cond_drop=a.settings.fake_cond_drop, objective=a.settings.objective,
                                      num_classes=a.null_label, text=a.text)))
