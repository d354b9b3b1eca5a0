"""TiUE (Li et al., CVPR 2025): a loop-free student with a time-independent shared encoder,
distilled data-free by variational score distillation (METHODS.md §4, as coded in
``sen-mao/Loopfree`` at 9a232a9 on SwiftBrush; every default below is that code's
``train_loopfree.py`` run by ``train_loopfree.sh``, docs/design/tiue.md, docs/design/fidelity.md).

The student is the teacher's network sampled loop-free (``sampling/loopfree.py``): one
encoder call on ``x_T`` at the first grid time, one decoder call over the ``K`` grid times
(``distill.grid``: diffusers' ``leading`` spacing, [751, 501, 251, 1] at K = 4), ``K`` DDIM
updates. Per step, from a batch's conditions only (no images):

1. ``x0_hat, raw_1..K = loopfree(x_T, c)``;
2. ``x_t = alpha_t sg(x0_hat) + sigma_t eps``, ``t = n / T`` with ``n`` uniform on the
   integers of ``[t_min T, t_max T]`` (0.021..0.981: diffusers' timesteps 20..980, the code's
   ``randint(20, 981)``);
   ``g = sigma_t^2 (eps_teacher^w(x_t) - eps_fake^w(x_t))`` (both under CFG scale ``w``);
   ``L = 0.5 mean((x0_hat - sg(x0_hat - g))^2) + kl_weight * noise_kl(raw_1..K)``, the KL
   summed over the ``K x kl_group`` maps of each group of ``kl_group`` samples and averaged
   over the groups (:func:`noise_kl`), on the network's raw eps output (``kl_on``);
3. the fake score (LoRA rank 64 / alpha 108 on the attention's query and value over the
   frozen teacher; ``fake = "full"``: a full copy) takes its own clipped Adam step on
   ``mean(alpha_t^2 (eps_fake(x_t, c') - eps)^2)`` at fresh ``t``, ``eps`` on
   ``sg(x0_hat)``, ``c'`` the null condition for the whole batch with probability
   ``fake_cond_drop`` (``fake_cond_drop_mode``).

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
from diffusion.train import lora
from distill.method import Method, batch_cond
from distill.registry import Distiller, Teacher, TeacherError, register
from sampling.grids import GRIDS, make_grid
from sampling.loop import sample
from sampling.loopfree import check_split, ddim_chain, loopfree_predictions
from sampling.solvers.ddim import DDIM
from sampling.transforms.guidance import Guided

OBJECTIVES = ("vsd", "regress")
KL_ON = ("raw_eps", "derived_eps")
FAKES = ("lora", "full")
DROP_MODES = ("batch", "sample")
# What a run made before issue 26 did, for the fields it did not have (configs/common.py:
# upgrade_config fills them into an old config.json, so it resumes and reads as it ran).
LEGACY = {"grid": "trailing", "kl_group": 1, "kl_ddof": 0, "kl_on": "derived_eps", "fake": "full",
          "fake_grad_clip": 0.0, "fake_cond_drop_mode": "sample"}
FAKE_LORA_KEY = 0  # the fake score's LoRA a-matrices are drawn from PRNGKey(0) (b = 0: the start is the teacher)


def vsd_loss(x0_hat: jax.Array, teacher_eps: jax.Array, fake_eps: jax.Array, sigma: jax.Array) -> jax.Array:
    """SwiftBrush's surrogate: ``0.5 mean((x0_hat - sg(x0_hat - g))^2)`` with
    ``g = sigma^2 (teacher_eps - fake_eps)``; its gradient in ``x0_hat`` is ``g / size``."""
    g = jax.lax.stop_gradient(bcast_right(sigma**2, x0_hat) * (teacher_eps - fake_eps))
    return 0.5 * jnp.mean(jnp.square(x0_hat - jax.lax.stop_gradient(x0_hat - g)))


def noise_kl(eps_maps: jax.Array, group: int | None = None, ddof: int = 1) -> jax.Array:
    """TiUE's regulariser on the ``K`` noise maps ``[K, B, ...]`` (without its weight).

    For each map ``n`` (one sample's whole tensor at one step), with ``mu_n`` the mean of its
    elements and ``v_n`` their variance with ``ddof`` (``torch.std``: 1),
    ``KL_n = 0.5 (mu_n^2 + v_n - 1 - log v_n)`` (``train_loopfree.py:419-425``); the result is
    ``(group / B) sum_{k, b} KL_{k, b}``: the sum over the ``K x group`` maps one process of
    ``group`` samples sees, averaged over the ``B / group`` groups. ``group = 8`` is the
    reference run (8 processes of batch 8, gradients averaged: ``train_loopfree.sh``);
    ``group = B`` (or None / 0) the literal sum over all ``K x B`` maps; ``group = 1`` the
    batch mean of the per-sample sums (before issue 26). Returns a scalar.
    """
    k, b = eps_maps.shape[:2]
    flat = eps_maps.reshape(k, b, -1)
    mu, var = jnp.mean(flat, axis=-1), jnp.var(flat, axis=-1, ddof=ddof)
    kl = 0.5 * (mu**2 + var - 1.0 - jnp.log(jnp.maximum(var, 1e-12)))
    g = group or b
    return jnp.sum(kl) * (g / b)


def drop_mask(key: jax.Array, p: float, b: int, mode: str = "batch") -> jax.Array:
    """``[B]`` bool: which samples the fake score sees unconditioned. ``batch``: one draw for
    the whole batch (``random.random() < 0.1``, ``train_loopfree.py:938``); ``sample``: one
    per sample."""
    if mode == "batch":
        return jnp.broadcast_to(jax.random.bernoulli(key, p), (b,))
    if mode == "sample":
        return jax.random.bernoulli(key, p, (b,))
    raise ValueError(f"unknown distill.fake_cond_drop_mode {mode!r}; expected one of {DROP_MODES}")


def fake_optimizer(lr: float, grad_clip: float = 1.0) -> optax.GradientTransformation:
    """The fake score's optimizer: global-norm clipping at ``grad_clip`` (0: none) then Adam
    (``torch.optim.Adam(lr)`` + ``clip_grad_norm_(1.0)``, ``train_loopfree.py:645-651, 954-955``)."""
    adam = optax.adam(lr)
    return optax.chain(optax.clip_by_global_norm(grad_clip), adam) if grad_clip > 0 else adam


def parse_targets(targets: str | tuple) -> tuple[str, ...]:
    """``"query,value"`` (a config string) or a tuple -> the LoRA target names."""
    if isinstance(targets, str):
        targets = tuple(t.strip() for t in targets.split(",") if t.strip())
    return lora.check_targets(targets)


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
    """``[B]`` times ``n / T``, ``n`` uniform on the integers of ``[lo T, hi T]`` (diffusers'
    timestep ``n - 1``)."""
    n = jax.random.randint(key, (b,), round(lo * T), round(hi * T) + 1)
    return n.astype(jnp.float32) / T


@struct.dataclass
class TiUEState:
    """``TrainState.extra``: the frozen teacher, the fake score's trained params (its LoRA
    adapters ``{"path/kernel": {"a", "b"}}`` over the teacher, or a full copy) and their
    optimizer state."""

    teacher: Any
    fake: Any
    fake_opt: Any


def tiue_distillation(teacher: Any, student: Any, *, steps: int = 4, grid: str = "leading", guidance: float = 4.5,
                      kl_weight: float = 0.1, kl_group: int = 8, kl_ddof: int = 1, kl_on: str = "raw_eps",
                      fake: str = "lora", fake_lora_rank: int = 64, fake_lora_alpha: float = 108.0,
                      fake_lora_targets: str | tuple = ("query", "value"), fake_lr: float = 1e-3,
                      fake_grad_clip: float = 1.0, t_min: float = 0.021, t_max: float = 0.981,
                      fake_cond_drop: float = 0.1, fake_cond_drop_mode: str = "batch", objective: str = "vsd",
                      num_classes: int | None = None, text: bool = False) -> Method:
    """TiUE's distillation of ``teacher`` into a loop-free ``student`` of ``steps`` K steps
    on the ``grid`` spacing (module docstring). ``guidance``: the CFG scale of the teacher
    and the fake score (1: none); ``num_classes``: the null label of a class-conditional
    model. ``kl_on``: ``raw_eps`` (the reference: the KL reads the network's output, which
    needs an eps-prediction student) or ``derived_eps`` (the eps a v / x0 output implies at
    the chained ``x_k``; declared deviation).

    Raises:
      ValueError: a setting out of range, a video or unsplittable student, or
        ``kl_on = "raw_eps"`` with a non-eps student.
    """
    check_split(student)
    if getattr(student.module, "temporal", False):
        raise ValueError("TiUE's loop-free student is an image model; this teacher is a video UNet")
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown distill.objective {objective!r}; expected one of {OBJECTIVES}")
    if steps < 1:
        raise ValueError(f"distill.steps must be >= 1, got {steps}")
    if grid not in GRIDS:
        raise ValueError(f"unknown distill.grid {grid!r}; expected one of {GRIDS}")
    if not 0.0 < t_min < t_max <= 1.0:
        raise ValueError(f"need 0 < distill.t_min < distill.t_max <= 1, got {t_min} and {t_max}")
    if not (kl_weight >= 0 and fake_lr > 0 and 0.0 <= fake_cond_drop <= 1.0 and guidance >= 0):  # NaN fails too
        raise ValueError("distill.kl_weight must be >= 0, distill.fake_lr > 0, distill.fake_cond_drop in [0, 1] and "
                         f"distill.guidance >= 0; got {kl_weight}, {fake_lr}, {fake_cond_drop} and {guidance}")
    if int(kl_group) != kl_group or kl_group < 0 or kl_ddof not in (0, 1):
        raise ValueError(f"distill.kl_group must be an integer >= 0 (0: the whole batch) and distill.kl_ddof 0 or 1; "
                         f"got {kl_group} and {kl_ddof}")
    if kl_on not in KL_ON:
        raise ValueError(f"unknown distill.kl_on {kl_on!r}; expected one of {KL_ON}")
    pred_type = getattr(student, "pred_type", None)
    if kl_on == "raw_eps" and kl_weight > 0 and pred_type != "eps":
        raise ValueError(raw_eps_error(pred_type))
    if fake not in FAKES:
        raise ValueError(f"unknown distill.fake {fake!r}; expected one of {FAKES}")
    if fake_cond_drop_mode not in DROP_MODES:
        raise ValueError(f"unknown distill.fake_cond_drop_mode {fake_cond_drop_mode!r}; expected one of {DROP_MODES}")
    if not (fake_grad_clip >= 0 and fake_lora_rank >= 1 and fake_lora_alpha > 0):
        raise ValueError("distill.fake_grad_clip must be >= 0 (0: off), distill.fake_lora_rank >= 1 and "
                         f"distill.fake_lora_alpha > 0; got {fake_grad_clip}, {fake_lora_rank} and {fake_lora_alpha}")
    targets = parse_targets(fake_lora_targets)
    conditional = num_classes is not None or text
    if guidance != 1.0 and not conditional:
        raise ValueError("distill.guidance != 1 needs a class- or text-conditional teacher")
    schedule = student.schedule
    times = make_grid(grid, steps, schedule)
    guided = (lambda den: Guided(den, guidance, null_label=num_classes if num_classes is not None else -1)
              if guidance != 1.0 else den)
    optimizer = fake_optimizer(fake_lr, fake_grad_clip)

    def fake_network(trained, teacher_params):
        """The fake score's network params from its trained tree."""
        if fake == "lora":
            return lora.merge({"base": teacher_params, "adapters": trained}, fake_lora_alpha)
        return trained

    def loss_fn(params, batch, rng, state):
        k_T, k_t, k_eps, k_next = jax.random.split(rng, 4)
        shape = batch["image"].shape  # only its shape: the method is data-free
        cond = batch_cond(batch, num_classes)
        x_T = jax.random.normal(k_T, shape)
        raw = loopfree_predictions(student, params, times[:-1], x_T, cond)
        x0_hat, eps_maps = ddim_chain(student, raw, times, x_T)
        aux = {"noise_kl": noise_kl(raw if kl_on == "raw_eps" else eps_maps, kl_group, kl_ddof)}
        if objective == "regress":
            target = sample(guided(teacher), state.extra.teacher, DDIM(schedule), times, x_T, cond)
            loss = jnp.mean(jnp.square(x0_hat - jax.lax.stop_gradient(target)))
        else:
            t = lattice_times(k_t, shape[0], t_min, t_max, schedule.T)
            x_t = forward_noise(schedule, jax.lax.stop_gradient(x0_hat), jax.random.normal(k_eps, shape), t)
            teacher_eps = guided(teacher)(state.extra.teacher, x_t, t, cond)[0].eps
            fake_eps = guided(teacher)(fake_network(state.extra.fake, state.extra.teacher), x_t, t, cond)[0].eps
            loss = vsd_loss(x0_hat, teacher_eps, fake_eps, schedule.alpha_sigma(t)[1])
        aux["distill_loss"] = loss
        if kl_weight:
            loss = loss + kl_weight * aux["noise_kl"]
        aux["carry"] = {"x0": jax.lax.stop_gradient(x0_hat), "cond": cond, "key": k_next}
        return loss, aux

    def fake_loss(trained, teacher_params, x0, cond, key):
        k_t, k_eps, k_drop = jax.random.split(key, 3)
        b = x0.shape[0]
        t = lattice_times(k_t, b, 1.0 / schedule.T, 1.0, schedule.T)
        eps = jax.random.normal(k_eps, x0.shape)
        alpha = schedule.alpha_sigma(t)[0]
        c = (drop_cond(cond, num_classes, drop_mask(k_drop, fake_cond_drop, b, fake_cond_drop_mode))
             if conditional else cond)
        pred = teacher(fake_network(trained, teacher_params), forward_noise(schedule, x0, eps, t), t, c)[0].eps
        return jnp.mean(bcast_right(alpha**2, x0) * jnp.square(pred - eps))

    def after_update(state, carry=None):
        if objective == "regress" or carry is None:
            return state
        extra = state.extra
        loss, grads = jax.value_and_grad(fake_loss)(extra.fake, extra.teacher, carry["x0"], carry["cond"],
                                                    carry["key"])
        updates, opt = optimizer.update(grads, extra.fake_opt, extra.fake)
        finite = jnp.isfinite(loss) & jnp.isfinite(optax.global_norm(grads))
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)  # noqa: E731
        return state.replace(extra=extra.replace(fake=keep(optax.apply_updates(extra.fake, updates), extra.fake),
                                                 fake_opt=keep(opt, extra.fake_opt)))

    def init_extra(student_params, teacher_params):
        if fake == "lora":
            try:
                trained = lora.init(teacher_params, fake_lora_rank, jax.random.PRNGKey(FAKE_LORA_KEY), targets,
                                    init_kind="peft")["adapters"]
            except ValueError as e:
                raise ValueError(f"TiUE's LoRA fake score (distill.fake_lora_rank={fake_lora_rank}, "
                                 f"distill.fake_lora_targets={','.join(targets)}): {e}; or set distill.fake=full") from e
        else:
            trained = jax.tree.map(jnp.copy, teacher_params)
        return TiUEState(teacher=teacher_params, fake=trained, fake_opt=optimizer.init(trained))

    return Method(loss_fn, init_extra, after_update)


def raw_eps_error(pred_type: str | None) -> str:
    return (f"distill.kl_on=raw_eps (the reference's KL on the network's eps output) needs an eps-prediction "
            f"student; this one predicts {pred_type!r}: distil from an eps teacher (configs/digits_sd_eps.py) or set "
            "distill.kl_on=derived_eps (the KL on the eps a v output implies: a declared deviation)")


def _check_teacher(settings, teacher: Teacher) -> None:
    if teacher.w_conditioned:
        raise TeacherError("TiUE distils a plain teacher; this one is a w-conditioned (guided-distillation) student")
    if settings.guidance != 1.0 and teacher.null_label is None and not teacher.text:
        raise TeacherError(f"distill.guidance={settings.guidance} needs a class- or text-conditional teacher "
                           "(set distill.guidance=1 for an unconditional one)")
    if settings.guidance != 1.0 and teacher.cond_drop_prob <= 0 and not teacher.text:
        raise TeacherError("distill.guidance != 1 needs a teacher trained with label dropout "
                           "(diffusion.cond_drop_prob > 0): it has no unconditional branch")
    if settings.kl_on == "raw_eps" and settings.kl_weight > 0 and teacher.pred_type != "eps":
        raise TeacherError(raw_eps_error(teacher.pred_type))


def _build(a):
    s = a.settings
    return tiue_distillation(
        a.teacher, a.student, steps=s.steps, grid=s.grid, guidance=s.guidance, kl_weight=s.kl_weight,
        kl_group=s.kl_group, kl_ddof=s.kl_ddof, kl_on=s.kl_on, fake=s.fake, fake_lora_rank=s.fake_lora_rank,
        fake_lora_alpha=s.fake_lora_alpha, fake_lora_targets=s.fake_lora_targets, fake_lr=s.fake_lr,
        fake_grad_clip=s.fake_grad_clip, t_min=s.t_min, t_max=s.t_max, fake_cond_drop=s.fake_cond_drop,
        fake_cond_drop_mode=s.fake_cond_drop_mode, objective=s.objective, num_classes=a.null_label, text=a.text)


# The defaults are the reference run's (train_loopfree.py + train_loopfree.sh at 9a232a9; docs/design/fidelity.md).
register(Distiller(
    "tiue", "TiUE: a loop-free student (one encoder pass, a K-batched decoder) distilled by VSD with a fake score",
    defaults={"steps": 4,  # K: the student's grid and decoder batch (sh: --num_inference_steps 4)
              "grid": "leading",  # the student's grid in training and sampling: SD's DDIMScheduler, [751, 501, 251, 1]
              "guidance": 4.5,  # CFG scale of the teacher and the fake score (sh: --guidance_scale 4.5)
              "kl_weight": 0.1,  # the noise-map KL regulariser (py: --lambda_kl 0.1; 0: off)
              "kl_group": 8,  # KL summed over K x kl_group maps, averaged over groups (sh: 8 processes of 8; 0: all B)
              "kl_ddof": 1,  # the maps' variance: unbiased (torch.std), 0: biased
              "kl_on": "raw_eps",  # raw_eps (the network's eps output) | derived_eps (a v net's implied eps: declared)
              "fake": "lora",  # lora (PEFT's LoRA over the teacher, py:490-495) | full (a full copy: declared)
              "fake_lora_rank": 64, "fake_lora_alpha": 108.0,  # sh: --lora_rank 64 --lora_alpha 108
              "fake_lora_targets": "query,value",  # target_modules=["to_q", "to_v"]
              "fake_lr": 1e-3,  # the fake score's Adam learning rate (sh: --learning_rate_lora 1e-3), constant
              "fake_grad_clip": 1.0,  # its global-norm clipping (py: --max_grad_norm 1.0; 0: off)
              "t_min": 0.021, "t_max": 0.981,  # VSD's t = n / T, n in 21..981: diffusers' timesteps 20..980
              "fake_cond_drop": 0.1,  # the fake score's condition dropout
              "fake_cond_drop_mode": "batch",  # batch (one draw per batch, py:938) | sample (one per sample)
              "objective": "vsd"},  # vsd | regress (onto the teacher's K-step DDIM sample: the baseline)
    smoke={"steps": 2, "fake_lora_rank": 8, "fake_lora_alpha": 13.5},  # the smoke net's attention is 16 wide
    check_teacher=_check_teacher,
    student=lambda config: {"solver": "ddim", "steps": config.distill.steps, "grid": config.distill.grid,
                            "loopfree": "on"},
    build=_build))
