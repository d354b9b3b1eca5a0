"""PSO (Miao et al., ICLR 2025): tuning a timestep-distilled student with pairwise sample
optimization (METHODS.md §5, as coded in ``ZichenMiao/Pairwise_Sample_Optimization``;
docs/design/pso.md).

The run's "teacher" is the distilled student being tuned: its params start the tuned model
and stay frozen as the reference copy. On the student's ``K``-step trailing grid:

* **offline** (``mode="offline"``): a target ``x_w`` of the batch (the config's own data:
  the target style) and a reference ``x_l`` with the same label, drawn from
  ``num_references`` samples the frozen student made once at the start (kept in the state,
  so in every checkpoint); one shared ``eps`` and ``t = grid[k]``, ``k`` uniform;
  ``l(x) = mean((x0_hat(x_t, t) - x)^2)`` per example under the tuned and the reference params:

  - ``dpo``: ``-log sigmoid(beta ((l_ref(w) - lam l_ref(l)) - (l(w) - lam l(l))))``;
  - ``hinge`` (the code's ``pso_db``): ``relu(1 + beta (l(w) - lam l(l))) + 0.5 l(l)``;
  - ``diffusion``: the naive baseline, the model's denoising loss (``weighting``) on the
    targets at uniform ``t``.

* **online** (``mode="online"``, D3PO-style): two ``K``-step trajectories per condition from
  the current params (no gradient; DDIM at ``online_eta``, so each transition but the last
  is Gaussian), ranked by ``reward`` (``diffusion/metrics/rewards.py``); at one random
  transition ``k < K - 1`` per pair, the Gaussian log-probability (averaged over elements)
  of the step taken under the tuned and the reference params,
  ``log r = log clip(exp(logp - logp_ref), 1 - clip, 1 + clip)``,
  ``L = -log sigmoid(beta (log r_w - log r_l))``.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from ml_collections import config_dict

from diffusion.losses import WEIGHTINGS, denoising_loss
from diffusion.param import forward_noise
from diffusion.schedules import bcast_right
from distill.method import Method, batch_cond
from distill.registry import BuildArgs, Distiller, Teacher, TeacherError, register
from distill.tiue import lattice_times
from sampling.grids import make_grid
from sampling.loop import sample
from sampling.solvers.ddim import DDIM

LOSSES = ("dpo", "hinge", "diffusion")
MODES = ("offline", "online")
REFERENCES_FILE = "pso_references.npz"  # the offline references of a work directory


@struct.dataclass
class PSOState:
    """``TrainState.extra``: the frozen reference params and the offline references
    (``images [R, ...]``, ``labels [R]``; one-element placeholders online)."""

    reference: Any
    images: jax.Array
    labels: jax.Array


def per_example_mse(a: jax.Array, b: jax.Array) -> jax.Array:
    """``[B]``: the mean squared difference of each example."""
    return jnp.mean(jnp.square(a - b).reshape(a.shape[0], -1), axis=-1)


def dpo_loss(l_w, l_l, ref_w, ref_l, beta: float, lam: float) -> jax.Array:
    """Diffusion-DPO's loss on per-example denoising errors ``[B]`` of the tuned model
    (``l_w``, ``l_l``) and the frozen reference (``ref_w``, ``ref_l``)."""
    margin = (ref_w - lam * ref_l) - (l_w - lam * l_l)
    return jnp.mean(-jax.nn.log_sigmoid(beta * margin))


def hinge_loss(l_w, l_l, beta: float, lam: float) -> jax.Array:
    """``pso_db``: reference-free hinge on the margin plus the prior term ``0.5 l_l``."""
    return jnp.mean(jax.nn.relu(1.0 + beta * (l_w - lam * l_l)) + 0.5 * l_l)


def gaussian_logprob(x: jax.Array, mean: jax.Array, std: jax.Array) -> jax.Array:
    """``[B]``: ``log N(x; mean, std^2)`` averaged over each example's elements (``std [B]``)."""
    s = bcast_right(std, x)
    logp = -0.5 * jnp.square((x - mean) / s) - jnp.log(s) - 0.5 * jnp.log(2.0 * jnp.pi)
    return jnp.mean(logp.reshape(x.shape[0], -1), axis=-1)


def clipped_log_ratio(logp: jax.Array, logp_ref: jax.Array, clip: float) -> jax.Array:
    """``log clip(exp(logp - logp_ref), 1 - clip, 1 + clip)``."""
    return jnp.clip(logp - logp_ref, jnp.log1p(-clip), jnp.log1p(clip))


def online_loss(logp_w, ref_w, logp_l, ref_l, beta: float, clip: float) -> jax.Array:
    margin = clipped_log_ratio(logp_w, ref_w, clip) - clipped_log_ratio(logp_l, ref_l, clip)
    return jnp.mean(-jax.nn.log_sigmoid(beta * margin))


def ddim_transition(denoiser, params, x, t, s, cond, eta):
    """``(mean [B, ...], std [B])`` of DDIM's step ``t -> s`` from ``x`` (``t``, ``s``: ``[B]``)."""
    pred = denoiser(params, x, t, cond)[0]
    alpha_t, sigma_t = denoiser.schedule.alpha_sigma(t)
    alpha_s, sigma_s = denoiser.schedule.alpha_sigma(s)
    ratio = jnp.where(sigma_t > 0, sigma_s / jnp.maximum(sigma_t, 1e-12), 0.0)
    std = eta * ratio * jnp.sqrt(jnp.clip(1.0 - (alpha_t / alpha_s) ** 2, 0.0, None))
    mean = bcast_right(alpha_s, x) * pred.x0 + bcast_right(jnp.sqrt(jnp.clip(sigma_s**2 - std**2, 0.0, None)), x) * pred.eps
    return mean, std


def trajectories(denoiser, params, grid, x_T, cond, eta, key) -> jax.Array:
    """``[K + 1, B, ...]``: the states of DDIM at ``eta`` over ``grid`` from ``x_T`` (no gradient)."""
    params = jax.lax.stop_gradient(params)

    def body(x, k):
        b = x.shape[0]
        t, s = jnp.full((b,), grid[k]), jnp.full((b,), grid[k + 1])
        mean, std = ddim_transition(denoiser, params, x, t, s, cond, eta)
        x_next = mean + bcast_right(std, x) * jax.random.normal(jax.random.fold_in(key, k), x.shape)
        return x_next, x_next

    _, states = jax.lax.scan(body, x_T, jnp.arange(len(grid) - 1))
    return jnp.concatenate([x_T[None], states])


def _pick(tree, index):
    return jax.tree.map(lambda a: a[index], tree)



def sample_references(student: Any, params: Any, steps: int, num_references: int, seed: int,
                      num_classes: int | None, image_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """``(images [R, *image_shape], labels [R])``: the frozen student's ``steps``-step DDIM
    samples on its trailing grid from ``PRNGKey(seed)``, labels cycling the classes (zeros
    when unconditional)."""
    labels = np.arange(num_references, dtype=np.int32) % (num_classes or 1)
    x_T = jax.random.normal(jax.random.PRNGKey(seed), (num_references, *image_shape))
    cond = {"label": jnp.asarray(labels)} if num_classes is not None else None
    grid = make_grid("trailing", steps, student.schedule)
    images = jax.jit(lambda p, x, c: sample(student, p, DDIM(student.schedule), grid, x, c))(params, x_T, cond)
    return np.asarray(images, np.float32), labels


def read_references(path: str | pathlib.Path, image_shape: tuple[int, ...],
                    num_classes: int | None) -> tuple[np.ndarray, np.ndarray]:
    """``(images, labels)`` of a references ``.npz``, in the cycling order the loss indexes
    (``label + classes * row``); every flaw is a ``ValueError`` naming ``path``."""
    path = pathlib.Path(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: np.asarray(f[k]) for k in ("images", "labels") if k in f.files}
    except FileNotFoundError:
        raise ValueError(f"{path}: no such references file") from None
    except Exception as e:  # noqa: BLE001 - a damaged zip, a pickle, a truncated member
        raise ValueError(f"{path} is not a readable .npz of references ({type(e).__name__}: {e})") from None
    if set(arrays) != {"images", "labels"}:
        raise ValueError(f"{path} lacks {sorted({'images', 'labels'} - set(arrays))}: a references file holds "
                         "images [R, ...] and labels [R]")
    images, labels = arrays["images"], arrays["labels"]
    if images.ndim != len(image_shape) + 1 or tuple(images.shape[1:]) != tuple(image_shape) or not len(images):
        raise ValueError(f"{path} holds images of shape {images.shape}; the model's samples are {tuple(image_shape)}")
    if not (np.issubdtype(images.dtype, np.floating) and np.isfinite(images).all()):
        raise ValueError(f"{path}: the images must be finite floats (got {images.dtype}, or NaN/inf values)")
    classes = num_classes or 1
    if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer) \
            or labels.min() < 0 or labels.max() >= classes:
        raise ValueError(f"{path}: labels must be {len(images)} integers in [0, {classes})")
    counts = np.bincount(labels, minlength=classes)
    if len(set(counts.tolist())) != 1:
        raise ValueError(f"{path}: every class needs the same number of references; counts {counts.tolist()}")
    order = np.stack([np.flatnonzero(labels == c) for c in range(classes)], axis=1).reshape(-1)
    return images[order].astype(np.float32), labels[order].astype(np.int32)


def write_references(path: pathlib.Path, images: np.ndarray, labels: np.ndarray) -> None:
    """Writes the reference cache atomically (process 0); a kill leaves the old file or none."""
    if jax.process_index() == 0:
        tmp = path.with_name(f".{path.stem}.tmp.npz")
        np.savez(tmp, images=images, labels=labels)
        os.replace(tmp, path)


def offline_references(settings, workdir: pathlib.Path, student: Any, params: Any, num_classes: int | None,
                       image_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, bool]:
    """``(images, labels, new)`` of a run in ``workdir``: its cache when it has one (a resume,
    or a run that stopped before its first checkpoint), else ``settings.references``, else
    sampled by the student; ``new``: the cache still has to be written. Checks everything
    before the caller writes anything."""
    cache = pathlib.Path(workdir) / REFERENCES_FILE
    if cache.exists():
        return (*read_references(cache, image_shape, num_classes), False)
    checkpoints = pathlib.Path(workdir) / "checkpoints"
    if checkpoints.is_dir() and any(p.name.isdigit() for p in checkpoints.iterdir()):
        raise ValueError(f"the reference cache {cache} is missing: this run's checkpoints were tuned against it; "
                         "restore it, or start a new work directory")
    if settings.get("references"):
        return (*read_references(settings.references, image_shape, num_classes), True)
    images, labels = sample_references(student, params, settings.steps, settings.num_references,
                                       settings.reference_seed, num_classes, image_shape)
    return images, labels, True


def check_settings(*, steps: int, loss: str, mode: str, beta: float, lam: float, clip: float, online_eta: float,
                   weighting: str, reward: str, num_references: int = 1, num_classes: int | None = None) -> None:
    """Every PSO knob, before anything runs: a ``ValueError`` naming the bad one."""
    if loss not in LOSSES:
        raise ValueError(f"unknown distill.loss {loss!r}; expected one of {LOSSES}")
    if mode not in MODES:
        raise ValueError(f"unknown distill.mode {mode!r}; expected one of {MODES}")
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown distill.weighting {weighting!r}; expected one of {WEIGHTINGS}")
    if not (steps >= 1 and beta > 0 and lam >= 0 and 0 < clip < 1 and online_eta > 0):  # NaN fails too
        raise ValueError(f"need distill.steps >= 1, beta > 0, lam >= 0, 0 < clip < 1, online_eta > 0; got {steps}, "
                         f"{beta}, {lam}, {clip}, {online_eta}")
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


def pso_tuning(student: Any, *, steps: int = 4, loss: str = "hinge", mode: str = "offline", beta: float = 5.0,
               lam: float = 0.1, references: tuple[np.ndarray, np.ndarray] | None = None, reward: str = "thick",
               clip: float = 0.1, online_eta: float = 1.0, weighting: str = "v",
               num_classes: int | None = None, cache: pathlib.Path | None = None) -> Method:
    """PSO on ``student`` (module docstring). ``references``: the offline pair losses'
    ``(images [R, ...], labels [R])`` in cycling order (:func:`offline_references`), ``R`` a
    multiple of the classes; ``num_classes``: the null label of a class-conditional model
    (labels pair targets with references); ``cache``: where ``before_training`` writes the
    references (None: nowhere)."""
    check_settings(steps=steps, loss=loss, mode=mode, beta=beta, lam=lam, clip=clip, online_eta=online_eta,
                   weighting=weighting, reward=reward)
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

    def x0_of(params, x_t, t, cond):
        return student(params, x_t, t, cond)[0].x0

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
        t = grid[jax.random.randint(k_t, (b,), 0, steps)]
        eps = jax.random.normal(k_eps, x_w.shape)
        x_t = jnp.concatenate([forward_noise(schedule, x_w, eps, t), forward_noise(schedule, x_l, eps, t)])
        target = jnp.concatenate([x_w, x_l])
        tt, cc = jnp.concatenate([t, t]), twice(cond)
        err = per_example_mse(x0_of(params, x_t, tt, cc), target)
        l_w, l_l = err[:b], err[b:]
        aux = {"loss_target": jnp.mean(l_w), "loss_reference": jnp.mean(l_l)}
        if loss == "hinge":
            return hinge_loss(l_w, l_l, beta, lam), aux
        ref = per_example_mse(jax.lax.stop_gradient(x0_of(refs.reference, x_t, tt, cc)), target)
        return dpo_loss(l_w, l_l, ref[:b], ref[b:], beta, lam), aux

    def online_loss_fn(params, batch, rng, state):
        b = batch["image"].shape[0]
        cond = batch_cond(batch, num_classes)
        k_T, k_traj, k_k = jax.random.split(rng, 3)
        x_T = jax.random.normal(k_T, (2 * b, *batch["image"].shape[1:]))
        states = trajectories(student, params, grid, x_T, twice(cond), online_eta, k_traj)  # [K+1, 2B, ...]
        labels = batch.get("label")
        r = score(states[-1], None if labels is None else jnp.concatenate([labels, labels]))
        a_wins = r[:b] >= r[b:]
        k = jax.random.randint(k_k, (b,), 0, steps - 1)  # a Gaussian transition (not the last)
        rows = jnp.arange(b)
        pick = lambda k_, first: jnp.where(bcast_right(first, states[0][:b]),  # noqa: E731
                                           states[k_, rows], states[k_, rows + b])
        x_w, x_l = pick(k, a_wins), pick(k, ~a_wins)
        n_w, n_l = pick(k + 1, a_wins), pick(k + 1, ~a_wins)
        x, x_next = jnp.concatenate([x_w, x_l]), jnp.concatenate([n_w, n_l])
        t, s = grid[jnp.concatenate([k, k])], grid[jnp.concatenate([k, k]) + 1]
        cc = twice(cond)
        mean, std = ddim_transition(student, params, x, t, s, cc, online_eta)
        ref_mean, _ = ddim_transition(student, jax.lax.stop_gradient(state.extra.reference), x, t, s, cc, online_eta)
        logp, logp_ref = gaussian_logprob(x_next, mean, std), gaussian_logprob(x_next, ref_mean, std)
        out = online_loss(logp[:b], logp_ref[:b], logp[b:], logp_ref[b:], beta, clip)
        return out, {"reward": jnp.mean(r), "reward_gap": jnp.mean(jnp.abs(r[:b] - r[b:]))}

    def init_extra(student_params, teacher_params):
        reference = jax.tree.map(jnp.copy, teacher_params)
        if not pairs:
            return PSOState(reference, jnp.zeros((1,)), jnp.zeros((1,), jnp.int32))
        return PSOState(reference, jnp.asarray(references[0]), jnp.asarray(references[1]))

    def before_training(workdir: pathlib.Path) -> None:
        if pairs and cache is not None and not cache.exists():
            write_references(cache, *references)

    return Method(online_loss_fn if mode == "online" else offline_loss, init_extra, before_training=before_training)


def build(a: BuildArgs) -> Method:
    """PSO from the run's settings; the offline pair losses' references from the work
    directory's cache, ``distill.references`` or the frozen student (:func:`offline_references`)."""
    s = a.settings
    check_settings(steps=s.steps, loss=s.loss, mode=s.mode, beta=s.beta, lam=s.lam, clip=s.clip,
                   online_eta=s.online_eta, weighting=s.weighting, reward=s.reward,
                   num_references=s.num_references, num_classes=a.null_label)
    references, cache = None, None
    if s.mode == "offline" and s.loss != "diffusion":
        images, labels, _ = offline_references(s, a.workdir, a.student, a.teacher_params, a.null_label,
                                               a.image_shape)
        references, cache = (images, labels), pathlib.Path(a.workdir) / REFERENCES_FILE
    return pso_tuning(a.student, steps=s.steps, loss=s.loss, mode=s.mode, beta=s.beta, lam=s.lam,
                      references=references, reward=s.reward, clip=s.clip, online_eta=s.online_eta,
                      weighting=s.weighting, num_classes=a.null_label, cache=cache)


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
              "beta": 5.0, "lam": 0.1,  # the margin's scale and the reference term's weight (neg_defactor)
              "num_references": 200,  # offline references sampled once by the frozen student
              "reference_seed": 0,
              "references": "",  # or an .npz of images [R, ...] and labels [R] to use instead
              "reward": "thick",  # online ranking: a name in diffusion/metrics/rewards.py
              "clip": 0.1,  # online: the ratio's clip (1 +- clip)
              "online_eta": 1.0,  # online: DDIM's eta of the sampled trajectories
              "weighting": "v"},  # loss=diffusion: the denoising loss's weighting
    smoke={"steps": 2, "num_references": 20},
    check_teacher=_check_teacher,
    tunes_students=True,
    own_data=True,
    student=lambda config: {"solver": "ddim", "steps": config.distill.steps},
    build=build))
