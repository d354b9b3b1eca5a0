"""PSO (Miao et al., ICLR 2025): tuning a timestep-distilled student with pairwise sample
optimization (METHODS.md §5, as coded in ``ZichenMiao/Pairwise_Sample_Optimization`` at
85e09df8; docs/design/pso.md, docs/design/fidelity.md).

The run's "teacher" is the distilled student being tuned: its params start the tuned model
and stay frozen as the reference copy. For a ``K``-step student:

* **offline** (``mode="offline"``): a target ``x_w`` of the batch (the config's own data:
  the target style) and a reference ``x_l`` with the same label, drawn from
  ``num_references`` samples the frozen student made once at the start (kept in the state,
  so in every checkpoint); one shared ``eps`` and one shared ``t``, uniform over
  ``pair_times``: ``"reference"`` (default) the times the authors' code trains,
  :func:`reference_times` (``{.751, .501, .251, .001}`` for ``K = 4``: never ``t = 1``),
  or ``"grid"`` the student's trailing grid ``{1, .75, .5, .25}``. Per example
  ``l(x) = denoising_loss(..., pair_weighting)`` under the tuned and the reference params
  (:func:`pair_errors`; ``"eps"``, default: the reference's ``sigma_EDM^-2``-weighted x0
  error, i.e. eps-MSE; ``"x0"``: unweighted x0-MSE);

  - ``dpo``: ``-log sigmoid(beta ((l_ref(w) - lam l_ref(l)) - (l(w) - lam l(l)))) + prior l(l)``;
  - ``hinge`` (the code's ``pso_db``): ``relu(1 + beta (l(w) - lam l(l))) + prior l(l)``;
  - ``diffusion``: the naive baseline, the model's denoising loss (``weighting``) on the
    targets at uniform ``t``.

* **online** (``mode="online"``, D3PO-style): two ``K``-step trajectories per condition from
  the current params (no gradient) with the Gaussian ``online_kernel`` (``"renoise"``,
  default: DMD2's ``x_s ~ N(alpha_s x0_hat, sigma_s^2)``, which is the consistency sampler;
  ``"ddim"``: DDIM at ``online_eta``, Turbo's Euler-ancestral at eta 1), ranked by ``reward``
  (``diffusion/metrics/rewards.py``) into ``h = sign(r_a - r_b)`` (a tie weighs zero); at
  every transition ``k < K - 1`` (``online_transitions="all"``; ``"one"``: one random ``k``
  per pair) the Gaussian log-probability (averaged over elements) of the step taken under
  the tuned and the reference params, ``d = log clip(exp(logp - logp_ref), 1 - clip, 1 + clip)``,
  ``L = mean_{k, pairs} -log sigmoid(beta h (d_a - d_b))``. The tuned student is sampled and
  evaluated with the kernel's sampler (:func:`student_sampler`).

``beta`` None takes the reference's value for the loss (:data:`DEFAULT_BETA`).
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from ml_collections import config_dict

from diffusion.losses import WEIGHTINGS, denoising_loss
from diffusion.param import forward_noise
from distill.method import Method, batch_cond
from distill.pso_online import (KERNELS, TRANSITIONS, clipped_log_ratio, gaussian_logprob, online_loss, preference,
                               trajectories, transition, transition_indices)
from distill.pso_references import REFERENCES_FILE, offline_references, write_references
from distill.registry import BuildArgs, Distiller, Teacher, TeacherError, register
from distill.tiue import lattice_times
from sampling.grids import make_grid

LOSSES = ("dpo", "hinge", "diffusion")
MODES = ("offline", "online")
TIMES = ("reference", "grid")  # offline pair times: the authors' code's, or the student's trailing grid
# beta when distill.beta is None: the released scripts' hinge (pso_*.sh:38 --beta_pso=5), the
# argparse default the DPO loss would run with (train_pso_sdxl_turbo_dreambooth.py:719-724; no
# script runs it) and the online configs' (config_sdxl_dmd_dpo.py:119)
DEFAULT_BETA = {"hinge": 5.0, "dpo": 200.0, "online": 50.0}

@struct.dataclass
class PSOState:
    """``TrainState.extra``: the frozen reference params and the offline references
    (``images [R, ...]``, ``labels [R]``; one-element placeholders online)."""

    reference: Any
    images: jax.Array
    labels: jax.Array


def resolve_beta(beta: float | None, loss: str, mode: str) -> float:
    """``beta``, or the reference's value for the loss when None (:data:`DEFAULT_BETA`;
    the naive ``diffusion`` loss has no beta: 5)."""
    if beta is not None:
        return float(beta)
    return DEFAULT_BETA["online" if mode == "online" else loss if loss in DEFAULT_BETA else "hinge"]


def reference_times(steps: int, schedule) -> jax.Array:
    """``[K]``: the times the authors' code trains a ``K``-step student at
    (``train_pso_sdxl_turbo_dreambooth.py:1727-1739``): indices ``stride k + stride - 1``,
    ``stride = T // K``, into diffusers' ``EulerDiscreteScheduler.timesteps``, which run
    *down* from ``T - 1`` (diffusers 0.27.0 ``scheduling_euler_discrete.py:218``), so the
    diffusers timesteps ``n_k = T - stride (k + 1)``; diffusers ``n`` is our
    ``t = (n + 1) / T``. ``K = 4, T = 1000``: ``{.751, .501, .251, .001}`` (never ``t = 1``)."""
    T = schedule.T
    n = T - (T // steps) * (np.arange(steps) + 1)
    return jnp.asarray((n + 1) / T, jnp.float32)


def pair_times_of(pair_times: str, steps: int, schedule) -> jax.Array:
    """``[K]``: the times the offline pair losses draw ``t`` from, uniformly (``TIMES``)."""
    if pair_times == "reference":
        return reference_times(steps, schedule)
    return make_grid("trailing", steps, schedule)[:steps]


def pair_errors(student, params, x_w, x_l, eps, t, cond, weighting: str) -> tuple[jax.Array, jax.Array]:
    """``(l_w [B], l_l [B])``: the per-example denoising errors (``diffusion.losses``'
    ``weighting``) of targets ``x_w`` and references ``x_l`` (``[B, ...]``) noised with one
    shared ``eps [B, ...]`` at one shared ``t [B]``, in one network call. ``"eps"`` (the
    reference, DB:1812-1848): ``mean((eps_hat - eps)^2) = sigma_EDM(t)^-2 mean((x0_hat - x)^2)
    = SNR(t) mean((x0_hat - x)^2)``; ``"x0"``: ``mean((x0_hat - x)^2)``."""
    b = x_w.shape[0]
    x, e, tt = jnp.concatenate([x_w, x_l]), jnp.concatenate([eps, eps]), jnp.concatenate([t, t])
    cc = jax.tree.map(lambda a: jnp.concatenate([a, a]), cond)
    pred = student(params, forward_noise(student.schedule, x, e, tt), tt, cc)[0]
    per = denoising_loss(pred, x, e, tt, student.schedule, weighting)[1]
    return per[:b], per[b:]


def dpo_loss(l_w, l_l, ref_w, ref_l, beta: float, lam: float, prior: float) -> jax.Array:
    """Diffusion-DPO's loss on per-example denoising errors ``[B]`` of the tuned model
    (``l_w``, ``l_l``) and the frozen reference (``ref_w``, ``ref_l``), plus the prior term
    ``prior mean(l_l)`` (DB:1878-1893: added to every loss type)."""
    margin = (ref_w - lam * ref_l) - (l_w - lam * l_l)
    return jnp.mean(-jax.nn.log_sigmoid(beta * margin)) + prior * jnp.mean(l_l)


def hinge_loss(l_w, l_l, beta: float, lam: float, prior: float) -> jax.Array:
    """``pso_db``: the reference-free hinge on the margin plus the prior term ``prior mean(l_l)``
    (DB:1850, 1880-1893)."""
    return jnp.mean(jax.nn.relu(1.0 + beta * (l_w - lam * l_l))) + prior * jnp.mean(l_l)



def student_sampler(settings) -> dict:
    """The tuned student's sampler (``Distiller.student``; its sample grids, its final FD and
    scripts/pso_results.py): online, the kernel's own (``renoise``: the consistency sampler;
    ``ddim``: DDIM at ``online_eta``), as the reference evaluates (train_online_pso_sdxl_dmd2.py:137,
    152-158); offline, the progressive student's DDIM (eta 0)."""
    if settings.mode == "online" and settings.get("online_kernel", "ddim") == "renoise":
        return {"solver": "consistency", "steps": settings.steps}
    if settings.mode == "online":
        return {"solver": "ddim", "steps": settings.steps, "eta": float(settings.online_eta)}
    return {"solver": "ddim", "steps": settings.steps}


def settings_before_issue26(loss: str) -> dict:
    """The knobs that reproduce PSO as it was before issue 26 (what an old work directory
    trained with): x0-MSE at the trailing grid times, the prior term on the hinge only,
    one DDIM transition per pair (a tie then went to the first trajectory; now zero)."""
    return {"pair_times": "grid", "pair_weighting": "x0", "prior_weight": 0.5 if loss == "hinge" else 0.0,
            "online_kernel": "ddim", "online_transitions": "one"}



def check_settings(*, steps: int, loss: str, mode: str, beta: float | None, lam: float, clip: float,
                   online_eta: float, weighting: str, reward: str, num_references: int = 1,
                   num_classes: int | None = None, pair_times: str = "reference", pair_weighting: str = "eps",
                   prior_weight: float = 0.5, online_kernel: str = "renoise", online_transitions: str = "all") -> None:
    """Every PSO knob, before anything runs: a ``ValueError`` naming the bad one."""
    for name, value, allowed in (("loss", loss, LOSSES), ("mode", mode, MODES), ("weighting", weighting, WEIGHTINGS),
                                 ("pair_times", pair_times, TIMES), ("pair_weighting", pair_weighting, WEIGHTINGS),
                                 ("online_kernel", online_kernel, KERNELS),
                                 ("online_transitions", online_transitions, TRANSITIONS)):
        if value not in allowed:
            raise ValueError(f"unknown distill.{name} {value!r}; expected one of {allowed}")
    if not (steps >= 1 and (beta is None or beta > 0) and lam >= 0 and 0 < clip < 1 and 0 < online_eta <= 1
            and prior_weight >= 0):  # NaN fails too
        raise ValueError(f"need distill.steps >= 1, beta > 0 (or None: the loss's default), lam >= 0, 0 < clip < 1, "
                         f"0 < online_eta <= 1, prior_weight >= 0; got {steps}, {beta}, {lam}, {clip}, {online_eta}, "
                         f"{prior_weight}")
    if mode == "online" and steps < 2:
        raise ValueError("online PSO needs distill.steps >= 2: the last step of a trajectory is deterministic, "
                         "so a 1-step student has no Gaussian transition to score")
    if mode == "online" and loss == "diffusion":
        raise ValueError("distill.loss='diffusion' (naive fine-tuning) is an offline baseline; use mode='offline'")
    if mode == "offline" and (num_references < 1 or (num_classes is not None and num_references % num_classes)):
        raise ValueError(f"distill.num_references must be a positive multiple of the {num_classes or 1} classes, "
                         f"got {num_references}")
    if mode == "online":
        from diffusion.metrics import rewards

        rewards.get(reward)  # an unknown name fails here, before anything runs


def pso_tuning(student: Any, *, steps: int = 4, loss: str = "hinge", mode: str = "offline", beta: float | None = None,
               lam: float = 0.1, references: tuple[np.ndarray, np.ndarray] | None = None, reward: str = "thick",
               clip: float = 0.1, online_eta: float = 1.0, weighting: str = "v", pair_times: str = "reference",
               pair_weighting: str = "eps", prior_weight: float = 0.5, online_kernel: str = "renoise",
               online_transitions: str = "all", num_classes: int | None = None,
               cache: pathlib.Path | None = None) -> Method:
    """PSO on ``student`` (module docstring). ``references``: the offline pair losses'
    ``(images [R, ...], labels [R])`` in cycling order (:func:`offline_references`), ``R`` a
    multiple of the classes; ``num_classes``: the null label of a class-conditional model
    (labels pair targets with references); ``cache``: where ``before_training`` writes the
    references (None: nowhere)."""
    check_settings(steps=steps, loss=loss, mode=mode, beta=beta, lam=lam, clip=clip, online_eta=online_eta,
                   weighting=weighting, reward=reward, pair_times=pair_times, pair_weighting=pair_weighting,
                   prior_weight=prior_weight, online_kernel=online_kernel, online_transitions=online_transitions)
    beta = resolve_beta(beta, loss, mode)
    pairs = mode == "offline" and loss != "diffusion"
    if pairs and references is None:
        raise ValueError("offline PSO needs its references (images, labels): see offline_references")
    if pairs:
        num_references = len(references[1])
        if num_classes is not None and num_references % num_classes:
            raise ValueError(f"{num_references} references do not cycle the {num_classes} classes")
    score = None
    if mode == "online":
        from diffusion.metrics import rewards

        score = rewards.get(reward)
    schedule = student.schedule
    grid = make_grid("trailing", steps, schedule)
    times = pair_times_of(pair_times, steps, schedule)

    def twice(cond):
        return jax.tree.map(lambda a: jnp.concatenate([a, a]), cond)

    def offline_loss(params, batch, rng, state):
        x_w = batch["image"]
        b = x_w.shape[0]
        cond = batch_cond(batch, num_classes)
        k_ref, k_t, k_eps = jax.random.split(rng, 3)
        if loss == "diffusion":
            t = lattice_times(k_t, b, 1.0 / schedule.T, 1.0, schedule.T)
            eps = jax.random.normal(k_eps, x_w.shape)
            pred = student(params, forward_noise(schedule, x_w, eps, t), t, cond)[0]
            return denoising_loss(pred, x_w, eps, t, schedule, weighting)[0], {}
        refs = state.extra
        if num_classes is not None:  # references cycle the classes: index = label + classes * row
            row = jax.random.randint(k_ref, (b,), 0, num_references // num_classes)
            idx = batch["label"] + num_classes * row
        else:
            idx = jax.random.randint(k_ref, (b,), 0, num_references)
        x_l = refs.images[idx]
        t = times[jax.random.randint(k_t, (b,), 0, steps)]
        eps = jax.random.normal(k_eps, x_w.shape)
        l_w, l_l = pair_errors(student, params, x_w, x_l, eps, t, cond, pair_weighting)
        aux = {"loss_target": jnp.mean(l_w), "loss_reference": jnp.mean(l_l)}
        if loss == "hinge":
            return hinge_loss(l_w, l_l, beta, lam, prior_weight), aux
        ref_w, ref_l = pair_errors(student, jax.lax.stop_gradient(refs.reference), x_w, x_l, eps, t, cond,
                                   pair_weighting)
        return dpo_loss(l_w, l_l, ref_w, ref_l, beta, lam, prior_weight), aux

    def online_loss_fn(params, batch, rng, state):
        b = batch["image"].shape[0]
        cond = batch_cond(batch, num_classes)
        k_T, k_traj, k_k = jax.random.split(rng, 3)
        x_T = jax.random.normal(k_T, (2 * b, *batch["image"].shape[1:]))
        cc = twice(cond)
        states = trajectories(student, params, grid, x_T, cc, online_eta, k_traj, online_kernel)  # [K+1, 2B, ...]
        labels = batch.get("label")
        r = score(states[-1], None if labels is None else jnp.concatenate([labels, labels]))
        h = preference(r)
        ks = transition_indices(k_k, online_transitions, steps, b)  # [J, 2B]
        j = ks.shape[0]
        cols = jnp.arange(2 * b)[None]
        flat = lambda a: a.reshape(j * 2 * b, *a.shape[2:])  # noqa: E731
        x, x_next = flat(states[ks, cols]), flat(states[ks + 1, cols])
        t, s = grid[ks].reshape(-1), grid[ks + 1].reshape(-1)
        cj = jax.tree.map(lambda a: jnp.tile(a, (j,) + (1,) * (a.ndim - 1)), cc)
        mean, std = transition(student, params, x, t, s, cj, online_kernel, online_eta)
        ref_mean, _ = transition(student, jax.lax.stop_gradient(state.extra.reference), x, t, s, cj, online_kernel,
                                 online_eta)
        logp, logp_ref = gaussian_logprob(x_next, mean, std), gaussian_logprob(x_next, ref_mean, std)
        d = clipped_log_ratio(logp, logp_ref, clip).reshape(j, 2 * b)
        return online_loss(d, h, beta), {"reward": jnp.mean(r), "reward_gap": jnp.mean(jnp.abs(r[:b] - r[b:])),
                                         "ties": jnp.mean(h == 0)}

    def init_extra(student_params, teacher_params):
        reference = jax.tree.map(jnp.copy, teacher_params)
        if not pairs:
            return PSOState(reference, jnp.zeros((1,)), jnp.zeros((1,), jnp.int32))
        return PSOState(reference, jnp.asarray(references[0]), jnp.asarray(references[1]))

    def before_training(workdir: pathlib.Path) -> None:
        if pairs and cache is not None and not cache.exists():
            write_references(cache, *references)

    return Method(online_loss_fn if mode == "online" else offline_loss, init_extra, before_training=before_training)


def knobs(settings) -> dict:
    """The ``config.distill`` fields :func:`pso_tuning` and :func:`check_settings` share."""
    return {k: settings[k] for k in ("steps", "loss", "mode", "beta", "lam", "clip", "online_eta", "weighting",
                                     "reward", "pair_times", "pair_weighting", "prior_weight", "online_kernel",
                                     "online_transitions")}


def build(a: BuildArgs) -> Method:
    """PSO from the run's settings; the offline pair losses' references from the work
    directory's cache, ``distill.references`` or the frozen student (:func:`offline_references`)."""
    s = a.settings
    check_settings(**knobs(s), num_references=s.num_references, num_classes=a.null_label)
    references, cache = None, None
    if s.mode == "offline" and s.loss != "diffusion":
        images, labels, _ = offline_references(s, a.workdir, a.student, a.teacher_params, a.null_label,
                                               a.image_shape)
        references, cache = (images, labels), pathlib.Path(a.workdir) / REFERENCES_FILE
    return pso_tuning(a.student, **knobs(s), references=references, num_classes=a.null_label, cache=cache)


def _check_teacher(settings, teacher: Teacher) -> None:
    if teacher.method is None:
        raise TeacherError(f"PSO tunes a timestep-distilled student; {teacher.workdir} is a diffusion model: distil it "
                           "first (e.g. configs/digits_progressive.py) and set distill.teacher_workdir to the student")
    if teacher.method != "progressive" or teacher.w_conditioned:
        raise TeacherError(f"PSO tunes students sampled by DDIM on their trailing grid (progressive students); "
                           f"{teacher.workdir} is a {teacher.method} student"
                           + (" conditioned on w" if teacher.w_conditioned else ""))
    if teacher.text:
        raise TeacherError("PSO on text-to-image students is not supported yet: it pairs references by class label")


register(Distiller(
    "pso", "PSO: tune a distilled student towards the config's data (or a reward) against a frozen copy of itself",
    defaults={"teacher_step": config_dict.placeholder(int),  # the student's checkpoint to tune (None: its last; a progressive run's
              # 4-step student ends its 4-step round)
              "steps": 4,  # K: the student's steps (its trailing DDIM grid)
              "loss": "hinge",  # hinge (pso_db) | dpo | diffusion (naive fine-tuning, the baseline)
              "mode": "offline",  # offline (cached references) | online (two trajectories ranked by a reward)
              "beta": config_dict.placeholder(float),  # the margin's scale; None: hinge 5, dpo 200, online 50
              "lam": 0.1,  # the reference term's weight (neg_defactor)
              "prior_weight": 0.5,  # offline: + prior_weight * mean(l_l), on the hinge and DPO (the scripts' 0.5)
              "pair_times": "reference",  # offline t: reference ({.751,.501,.251,.001} at K=4) | grid ({1,.75,.5,.25})
              "pair_weighting": "eps",  # offline pair errors: eps (the reference's sigma_EDM^-2 x0-MSE) | x0 | v
              "num_references": 200,  # offline references sampled once by the frozen student
              "reference_seed": 0,
              "references": "",  # or an .npz of images [R, ...] and labels [R] to use instead
              "reward": "thick",  # online ranking: a name in diffusion/metrics/rewards.py
              "clip": 0.1,  # online: the ratio's clip (1 +- clip)
              "online_kernel": "renoise",  # online transitions: renoise (DMD2; sampled with consistency) | ddim
              "online_eta": 1.0,  # online_kernel=ddim: DDIM's eta of the sampled trajectories (<= 1)
              "online_transitions": "all",  # online: score all K-1 Gaussian transitions | one random per pair
              "weighting": "v"},  # loss=diffusion: the denoising loss's weighting
    smoke={"steps": 2, "num_references": 20},
    check_teacher=_check_teacher,
    tunes_students=True,
    own_data=True,
    student=lambda config: student_sampler(config.distill),
    build=build))
