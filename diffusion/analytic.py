"""An exact denoiser: data from an isotropic Gaussian mixture has a closed-form posterior mean.

For ``x0 ~ sum_k w_k N(mu_k, s_k^2 I_D)`` and ``x_t = alpha x0 + sigma eps``:
``x_t | k ~ N(alpha mu_k, v_k I)`` with ``v_k = alpha^2 s_k^2 + sigma^2``, the posterior
responsibilities are ``r_k ∝ w_k N(x_t; alpha mu_k, v_k I)``, and
``E[x0 | x_t] = sum_k r_k (mu_k + alpha s_k^2 / v_k (x_t - alpha mu_k))``.
A "model" returning this is exact, so solvers can be tested against the true
probability-flow ODE and the true data distribution.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from diffusion.contract import Stateless
from diffusion.param import Prediction
from diffusion.schedules import Schedule, bcast_right


@struct.dataclass
class GaussianMixtureDenoiser(Stateless):
    """The exact denoiser of a Gaussian mixture (``diffusion.contract``; caches nothing).

    Attributes:
      means: ``[K, D]`` component means (``D`` = the product of the data's trailing shape).
      stds: ``[K]`` isotropic component standard deviations.
      weights: ``[K]`` mixture weights (normalised here).
      schedule: the forward process.
    """

    means: jax.Array
    stds: jax.Array
    weights: jax.Array
    schedule: Schedule = struct.field(pytree_node=False)

    def __call__(self, params, x_t: jax.Array, t: jax.Array, cond=None, **_) -> tuple[Prediction, dict]:
        """``x_t: [B, ...]`` with ``prod(...) = D``; ``t``: ``[]`` or ``[B]`` -> ``(Prediction, {})``
        (``params``, ``cond`` and the cache arguments are ignored)."""
        b = x_t.shape[0]
        x = x_t.reshape(b, -1)
        t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (b,))
        alpha, sigma = self.schedule.alpha_sigma(t)  # [B]
        a, s2 = alpha[:, None], sigma[:, None] ** 2  # [B, 1]
        var = a**2 * self.stds[None, :] ** 2 + s2  # [B, K]
        diff = x[:, None, :] - a[:, :, None] * self.means[None]  # [B, K, D]
        d = x.shape[1]
        logits = (jnp.log(self.weights / self.weights.sum())[None] - 0.5 * d * jnp.log(var)
                  - 0.5 * jnp.sum(diff**2, -1) / var)
        resp = jax.nn.softmax(logits, axis=-1)  # [B, K]
        gain = a * self.stds[None, :] ** 2 / var  # [B, K]
        x0_k = self.means[None] + gain[:, :, None] * diff  # [B, K, D]
        x0 = jnp.einsum("bk,bkd->bd", resp, x0_k).reshape(x_t.shape)
        eps = (x_t - bcast_right(alpha, x_t) * x0) / bcast_right(jnp.maximum(sigma, 1e-6), x_t)
        return Prediction(x0=x0, eps=eps), {}

    def sample_data(self, key: jax.Array, n: int) -> jax.Array:
        """``[n, D]`` draws from the mixture."""
        k1, k2 = jax.random.split(key)
        comp = jax.random.categorical(k1, jnp.log(self.weights / self.weights.sum()), shape=(n,))
        noise = jax.random.normal(k2, (n, self.means.shape[1]))
        return self.means[comp] + self.stds[comp][:, None] * noise

    def moments(self) -> tuple[jax.Array, jax.Array]:
        """The mixture's per-dimension mean ``[D]`` and variance ``[D]``."""
        w = self.weights / self.weights.sum()
        mean = w @ self.means
        second = w @ (self.means**2 + self.stds[:, None] ** 2)
        return mean, second - mean**2


def make_mixture(schedule: Schedule, means, stds, weights=None) -> GaussianMixtureDenoiser:
    means = jnp.asarray(means, jnp.float32)
    stds = jnp.broadcast_to(jnp.asarray(stds, jnp.float32), means.shape[:1])
    weights = jnp.ones(means.shape[0]) if weights is None else jnp.asarray(weights, jnp.float32)
    return GaussianMixtureDenoiser(means, stds, weights, schedule)


def probability_flow_reference(mixture: GaussianMixtureDenoiser, x_start, t_start: float, t_end: float,
                               rtol: float = 1e-11):
    """The exact probability-flow ODE solution from ``t_start`` to ``t_end`` in float64.

    With ``lambda = log(alpha / sigma)`` and ``y = x / sigma`` the VP probability-flow ODE
    is ``dy / dlambda = e^lambda E[x0 | x]`` (the form DPM-Solver++ integrates), which only
    needs the schedule's ``lambda`` at the two ends. Integrated by SciPy's DOP853 with
    tight tolerances on a float64 NumPy copy of the mixture: a reference independent of
    every Kairos solver.

    Args:
      mixture: the data distribution (its schedule gives the end points).
      x_start: ``[B, D]`` states at ``t_start``.
      t_start, t_end: times, ``t_start > t_end > 0``.

    Returns:
      ``[B, D]`` float64 states at ``t_end``.
    """
    import numpy as np
    from scipy.integrate import solve_ivp

    means = np.asarray(mixture.means, np.float64)
    var0 = np.asarray(mixture.stds, np.float64) ** 2
    logw = np.log(np.asarray(mixture.weights, np.float64) / float(np.sum(mixture.weights)))
    lam0 = 0.5 * float(mixture.schedule.logsnr(jnp.asarray(t_start)))
    lam1 = 0.5 * float(mixture.schedule.logsnr(jnp.asarray(t_end)))
    x_start = np.asarray(x_start, np.float64)
    shape, d = x_start.shape, x_start.shape[1]

    def alpha_sigma(lam):
        return np.sqrt(1.0 / (1.0 + np.exp(-2.0 * lam))), np.sqrt(1.0 / (1.0 + np.exp(2.0 * lam)))

    def posterior_mean(x, a, s):
        var = a**2 * var0 + s**2  # [K]
        diff = x[:, None, :] - a * means[None]  # [B, K, D]
        logits = logw - 0.5 * d * np.log(var) - 0.5 * np.sum(diff**2, -1) / var
        logits -= logits.max(axis=1, keepdims=True)
        resp = np.exp(logits)
        resp /= resp.sum(axis=1, keepdims=True)
        return np.einsum("bk,bkd->bd", resp, means[None] + (a * var0 / var)[None, :, None] * diff)

    def rhs(lam, y):
        a, s = alpha_sigma(lam)
        return np.exp(lam) * posterior_mean(s * y.reshape(shape), a, s).ravel()

    s0 = alpha_sigma(lam0)[1]
    sol = solve_ivp(rhs, (lam0, lam1), (x_start / s0).ravel(), method="DOP853", rtol=rtol, atol=rtol)
    if not sol.success:
        raise RuntimeError(f"reference ODE solve failed: {sol.message}")
    return alpha_sigma(lam1)[1] * sol.y[:, -1].reshape(shape)


@struct.dataclass
class SharedLatentVideoDenoiser(Stateless):
    """The exact denoiser of a Gaussian video whose frames share a latent: frame ``i`` is
    ``x0_i = z + n_i`` with ``z ~ N(0, s_shared^2 I_D)`` and ``n_i ~ N(0, s_frame^2 I_D)``
    independent, so each pixel's ``F`` values are ``N(0, Sigma)``, ``Sigma = s_shared^2 11^T
    + s_frame^2 I``. With per-frame times, ``x_t = A x0 + S^{1/2} eps`` (``A = diag(alpha_i)``,
    ``S = diag(sigma_i^2)``) and ``E[x0 | x_t] = Sigma A (A Sigma A + S)^{-1} x_t``: the
    closed form a frame plan is tested against (a clean frame, ``t_i = 0``, conditions the
    others exactly). Inputs ``x_t: [B, F, ...]``, ``t: [] | [B] | [B, F]``."""

    s_shared: float
    s_frame: float
    schedule: Schedule = struct.field(pytree_node=False)

    def __call__(self, params, x_t: jax.Array, t: jax.Array, cond=None, **_) -> tuple[Prediction, dict]:
        b, f = x_t.shape[:2]
        t = jnp.asarray(t, jnp.float32)
        t = jnp.broadcast_to(t[:, None] if t.ndim == 1 else t, (b, f))
        alpha, sigma = self.schedule.alpha_sigma(t)  # [B, F]
        cov = self.s_shared**2 * jnp.ones((f, f)) + self.s_frame**2 * jnp.eye(f)
        a = alpha[:, :, None]
        system = a * cov[None] * alpha[:, None, :] + jax.vmap(jnp.diag)(sigma**2)  # A Sigma A + S, [B, F, F]
        y = x_t.reshape(b, f, -1)
        x0 = jnp.einsum("ij,bj,bjd->bid", cov, alpha, jnp.linalg.solve(system, y)).reshape(x_t.shape)
        eps = (x_t - bcast_right(alpha, x_t) * x0) / bcast_right(jnp.maximum(sigma, 1e-6), x_t)
        return Prediction(x0=x0, eps=eps), {}

    def given_one_frame(self) -> tuple[float, float]:
        """``(gain, variance)`` of any other frame given one clean frame ``x_g``:
        ``E[x_i | x_g] = gain * x_g`` and ``Var[x_i | x_g] = variance`` per pixel."""
        total = self.s_shared**2 + self.s_frame**2
        return self.s_shared**2 / total, total - self.s_shared**4 / total
