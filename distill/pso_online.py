"""Online PSO's pieces (D3PO-style; distill/pso.py): the Gaussian transitions of the
student's own kernel, the trajectories it samples, their clipped log-ratios against the
frozen reference, the rewards' preferences and the pair loss."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from diffusion.schedules import bcast_right

KERNELS = ("renoise", "ddim")  # online transitions: DMD2's re-noising, or DDIM at online_eta (Turbo's at 1)


TRANSITIONS = ("all", "one")  # online: every Gaussian transition of a trajectory, or one random one per pair


def gaussian_logprob(x: jax.Array, mean: jax.Array, std: jax.Array) -> jax.Array:
    """``[B]``: ``log N(x; mean, std^2)`` averaged over each example's elements (``std [B]``)."""
    s = bcast_right(std, x)
    logp = -0.5 * jnp.square((x - mean) / s) - jnp.log(s) - 0.5 * jnp.log(2.0 * jnp.pi)
    return jnp.mean(logp.reshape(x.shape[0], -1), axis=-1)


def clipped_log_ratio(logp: jax.Array, logp_ref: jax.Array, clip: float) -> jax.Array:
    """``log clip(exp(logp - logp_ref), 1 - clip, 1 + clip)``."""
    return jnp.clip(logp - logp_ref, jnp.log1p(-clip), jnp.log1p(clip))


def preference(r: jax.Array) -> jax.Array:
    """``h [B]`` of rewards ``r [2B]`` (pairs ``(i, i + B)``): +1 when the first wins, -1 when
    the second does, 0 on a tie (DMD2's ``compare``, train_online_pso_sdxl_dmd2.py:426-434)."""
    b = r.shape[0] // 2
    return jnp.sign(r[:b] - r[b:])


def online_loss(d: jax.Array, h: jax.Array, beta: float) -> jax.Array:
    """The mean over transitions ``J`` and pairs ``B`` of ``-log sigmoid(beta h (d_a - d_b))``
    (train_online_pso_sdxl_dmd2.py:851-854, averaged over the transitions as ON:236/773
    accumulate): ``d [J, 2B]`` clipped log-ratios of the pairs' members ``(i, i + B)``,
    ``h [B]`` (:func:`preference`). A tie (``h = 0``) gives ``log 2`` and no gradient."""
    b = h.shape[0]
    return jnp.mean(-jax.nn.log_sigmoid(beta * h[None] * (d[:, :b] - d[:, b:])))


def ddim_transition(denoiser, params, x, t, s, cond, eta):
    """``(mean [B, ...], std [B])`` of DDIM's step ``t -> s`` from ``x`` (``t``, ``s``: ``[B]``)."""
    pred = denoiser(params, x, t, cond)[0]
    alpha_t, sigma_t = denoiser.schedule.alpha_sigma(t)
    alpha_s, sigma_s = denoiser.schedule.alpha_sigma(s)
    ratio = jnp.where(sigma_t > 0, sigma_s / jnp.maximum(sigma_t, 1e-12), 0.0)
    std = eta * ratio * jnp.sqrt(jnp.clip(1.0 - (alpha_t / alpha_s) ** 2, 0.0, None))
    mean = bcast_right(alpha_s, x) * pred.x0 + bcast_right(jnp.sqrt(jnp.clip(sigma_s**2 - std**2, 0.0, None)), x) * pred.eps
    return mean, std


def transition(denoiser, params, x, t, s, cond, kernel: str, eta: float):
    """``(mean [B, ...], std [B])`` of the online kernel's step ``t -> s`` (``KERNELS``):
    ``"renoise"`` (DMD2, distilled_inference_with_logprob.py:102-126; the consistency
    sampler's step) ``N(alpha_s x0_hat, sigma_s^2)``; ``"ddim"``: :func:`ddim_transition`."""
    if kernel == "renoise":
        pred = denoiser(params, x, t, cond)[0]
        alpha_s, sigma_s = denoiser.schedule.alpha_sigma(s)
        return bcast_right(alpha_s, x) * pred.x0, sigma_s
    return ddim_transition(denoiser, params, x, t, s, cond, eta)


def trajectories(denoiser, params, grid, x_T, cond, eta, key, kernel: str = "ddim") -> jax.Array:
    """``[K + 1, B, ...]``: the states of the ``kernel``'s chain over ``grid`` from ``x_T``
    (no gradient)."""
    params = jax.lax.stop_gradient(params)

    def body(x, k):
        b = x.shape[0]
        t, s = jnp.full((b,), grid[k]), jnp.full((b,), grid[k + 1])
        mean, std = transition(denoiser, params, x, t, s, cond, kernel, eta)
        x_next = mean + bcast_right(std, x) * jax.random.normal(jax.random.fold_in(key, k), x.shape)
        return x_next, x_next

    _, states = jax.lax.scan(body, x_T, jnp.arange(len(grid) - 1))
    return jnp.concatenate([x_T[None], states])


def transition_indices(key: jax.Array, transitions: str, steps: int, b: int) -> jax.Array:
    """``[J, 2B]``: which transition ``k < K - 1`` each row of the ``2B`` trajectories is
    scored at (the last, deterministic one never): ``"all"``, ``J = K - 1``, every one
    (train_online_pso_sdxl_dmd2.py:628-635, 773); ``"one"``, ``J = 1``, one uniform ``k``
    per pair, shared by its two members."""
    if transitions == "all":
        return jnp.broadcast_to(jnp.arange(steps - 1)[:, None], (steps - 1, 2 * b))
    k = jax.random.randint(key, (b,), 0, steps - 1)
    return jnp.concatenate([k, k])[None]
