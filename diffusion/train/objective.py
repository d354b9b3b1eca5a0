"""Plain denoising training as a method: the loss ``loss_fn(params, batch, rng, state)``."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from diffusion.losses import denoising_loss
from diffusion.nn.denoiser import Denoiser
from diffusion.param import forward_noise
from diffusion.schedules import Schedule
from diffusion.train.state import TrainState


def sample_times(key: jax.Array, shape: tuple[int, ...], schedule: Schedule) -> jax.Array:
    """Training times: uniform over ``{1..T} / T`` for a discrete schedule, ``U(0, 1]`` else."""
    if schedule.num_steps:
        n = jax.random.randint(key, shape, 1, schedule.T + 1)
        return n.astype(jnp.float32) / schedule.T
    return 1.0 - jax.random.uniform(key, shape)  # (0, 1]


REFERENCE_GROUP = 2  # FVDM's local batch per GPU for UCF101, Taichi and Sky (one coin per rank)


def check_group(group) -> None:
    """``group`` of :func:`video_times`: an int >= 0, or a clear error."""
    if isinstance(group, bool) or not isinstance(group, int) or group < 0:
        raise ValueError(f"the per-frame coin's group must be an int >= 0 (0: one coin per batch), got {group!r} "
                         "(config.diffusion.per_frame_group)")


def video_times(key: jax.Array, batch: int, frames: int, per_frame_prob: float, schedule: Schedule,
                group: int = REFERENCE_GROUP) -> jax.Array:
    """FVDM's probabilistic timestep sampling: ``[batch, frames]`` times. One coin per
    ``group`` consecutive samples: with probability ``per_frame_prob`` every frame of those
    samples draws its own time; otherwise each sample draws one, shared by its frames.
    ``per_frame_prob = 0`` is a standard video model.

    The reference tosses its coin once per training step on each DDP rank
    (FVDM@9373f998 ``train_video.py:340``, ranks seeded apart at ``:70-71``), i.e. once per
    *local* batch: 2 samples for UCF101, Taichi and Sky (``local_batch_size: 2``), 3 for FFS.
    ``group = 2`` (default) is that; a global batch then mixes per-frame and synchronised
    samples. ``group = 0`` is one coin for the whole batch (Kairos before issue 26); a last
    group shorter than ``group`` gets its own coin."""
    check_group(group)
    k_coin, k_frames, k_shared = jax.random.split(key, 3)
    own = sample_times(k_frames, (batch, frames), schedule)
    shared = jnp.broadcast_to(sample_times(k_shared, (batch, 1), schedule), (batch, frames))
    if group == 0 or group >= batch:
        return jnp.where(jax.random.uniform(k_coin) < per_frame_prob, own, shared)
    coins = jax.random.uniform(k_coin, (-(-batch // group),)) < per_frame_prob  # one per group
    return jnp.where(jnp.repeat(coins, group)[:batch, None], own, shared)


def drop_labels(key: jax.Array, labels: jax.Array, prob: float, null_label: int) -> jax.Array:
    """Replaces each label by ``null_label`` with probability ``prob`` (classifier-free guidance)."""
    if prob <= 0:
        return labels
    return jnp.where(jax.random.uniform(key, labels.shape) < prob, null_label, labels)


def make_diffusion_loss(denoiser: Denoiser, weighting: str = "eps", cond_drop_prob: float = 0.0,
                        num_classes: int | None = None, per_frame_prob: float = 0.0,
                        per_frame_group: int = REFERENCE_GROUP):
    """The denoising objective for ``batch = {"image": [B, ...], "label": [B]}`` (or, for a
    text model, ``"context": [B, L, D]``: captions were already dropped to the empty
    prompt in the input pipeline).

    ``x_t = alpha(t) x0 + sigma(t) eps`` at ``t`` from :func:`sample_times` (``[B]``), or
    for video ``image [B, F, H, W, C]`` at per-frame times ``[B, F]`` from
    :func:`video_times` with ``per_frame_prob`` (one coin per ``per_frame_group`` samples),
    the loss per frame at its own time; the
    label is dropped to the null label ``num_classes`` with probability ``cond_drop_prob``.
    Returns ``loss_fn(params, batch, rng, state) -> (loss, {})``.
    """
    check_group(per_frame_group)
    schedule = denoiser.schedule

    def loss_fn(params, batch, rng, state: TrainState):
        x0 = batch["image"]
        k_t, k_eps, k_drop, k_net = jax.random.split(rng, 4)
        if x0.ndim == 5:
            t = video_times(k_t, x0.shape[0], x0.shape[1], per_frame_prob, schedule, per_frame_group)
        else:
            t = sample_times(k_t, x0.shape[:1], schedule)
        eps = jax.random.normal(k_eps, x0.shape, x0.dtype)
        x_t = forward_noise(schedule, x0, eps, t)
        cond = {"context": batch["context"]} if "context" in batch else {}
        if num_classes is not None:
            cond["label"] = drop_labels(k_drop, batch["label"], cond_drop_prob, num_classes)
        pred, _ = denoiser(params, x_t, t, cond, rng=k_net, train=True)
        loss, _ = denoising_loss(pred, x0, eps, t, schedule, weighting)
        return loss, {}

    return loss_fn
