"""Variance-preserving noise schedules as pure functions of a time array of any shape.

Convention (docs/design/core.md): ``x_t = alpha(t) x_0 + sigma(t) eps`` with
``alpha^2 + sigma^2 = 1`` and continuous ``t`` in ``[0, 1]`` (``t = 0`` is data).
``t`` may have any shape (``[]``, ``[B]``, ``[B, F]``, ...); every function here is
elementwise in ``t``. Discrete beta schedules are tables over ``n = 0..T`` placed at
``t = n / T`` and linearly interpolated in ``log alpha_bar`` in between.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

Array = jnp.ndarray


def bcast_right(a: Array, x: Array) -> Array:
    """Appends trailing singleton axes to ``a`` so it broadcasts against ``x``.

    Args:
      a: an array of shape ``S`` (e.g. ``[B]`` or ``[B, F]``), a prefix of ``x.shape``
        (or broadcastable to it).
      x: ``[*S, ...]``.

    Returns:
      ``a`` reshaped to ``S + (1,) * (x.ndim - a.ndim)``.
    """
    a = jnp.asarray(a)
    if a.ndim > x.ndim:
        raise ValueError(f"time array of shape {a.shape} has more axes than data of shape {x.shape}")
    return a.reshape(a.shape + (1,) * (x.ndim - a.ndim))


class Schedule(abc.ABC):
    """Base class: subclasses define ``log_alpha_bar(t)`` and its inverse; the rest follows."""

    #: Number of training steps of a discrete schedule, ``0`` for continuous ones.
    num_steps: int = 0

    @property
    def T(self) -> int:  # noqa: N802 - the papers' name
        """The training lattice ``n = 0..T``: a discrete schedule's ``num_steps``; continuous
        schedules use a 1000-step lattice (time grids, TS-DPM windows, LCM's time index)."""
        return self.num_steps or 1000

    @abc.abstractmethod
    def log_alpha_bar(self, t: Array) -> Array:
        """``log alpha(t)^2``, shape of ``t``."""

    def alpha_bar(self, t: Array) -> Array:
        """``alpha(t)^2`` (DDPM's cumulative product of ``1 - beta``), shape of ``t``."""
        return jnp.exp(self.log_alpha_bar(t))

    def alpha_sigma(self, t: Array) -> tuple[Array, Array]:
        """Returns ``(alpha(t), sigma(t))``, each with the shape of ``t``."""
        lab = self.log_alpha_bar(t)
        return jnp.exp(0.5 * lab), jnp.sqrt(-jnp.expm1(lab))

    def logsnr(self, t: Array) -> Array:
        """``log(alpha^2 / sigma^2)``; ``+inf`` at ``t = 0``."""
        lab = self.log_alpha_bar(t)
        return lab - jnp.log(-jnp.expm1(lab))

    def t_from_logsnr(self, logsnr: Array) -> Array:
        """Inverse of :meth:`logsnr` (used for logSNR-uniform grids)."""
        # log alpha_bar = log sigmoid(logsnr) = -softplus(-logsnr)
        return self.t_from_log_alpha_bar(-jnp.logaddexp(0.0, -logsnr))

    @abc.abstractmethod
    def t_from_log_alpha_bar(self, lab: Array) -> Array:
        """The time whose ``log alpha_bar`` is ``lab`` (inverse of :meth:`log_alpha_bar`)."""

    def network_time(self, t: Array) -> Array:
        """The time the network is told at time ``t`` (the denoiser's input to the network; its
        prediction is still read at ``t``): ``t`` itself, except where a reading of a foreign
        scheduler rounds it (``diffusion.sigma_schedule``)."""
        return t


@functools.lru_cache(maxsize=None)
def _discrete_table(kind: str, num_steps: int, beta_start: float, beta_end: float) -> np.ndarray:
    """``log alpha_bar_n`` for ``n = 0..T`` in float64 (``n = 0`` is ``0``)."""
    n = np.arange(1, num_steps + 1, dtype=np.float64)
    if kind == "linear":
        betas = np.linspace(beta_start, beta_end, num_steps, dtype=np.float64)
    elif kind == "scaled_linear":  # Stable Diffusion's: linear in sqrt(beta)
        betas = np.linspace(beta_start**0.5, beta_end**0.5, num_steps, dtype=np.float64) ** 2
    elif kind == "cosine":  # Nichol & Dhariwal 2021, betas clipped at 0.999
        s = 0.008
        f = lambda u: np.cos((u / num_steps + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
        betas = np.clip(1.0 - f(n) / f(n - 1), 0.0, 0.999)
    else:
        raise ValueError(f"unknown discrete schedule {kind!r}; expected one of linear, scaled_linear, cosine")
    return np.concatenate([[0.0], np.cumsum(np.log1p(-betas))])


@dataclasses.dataclass(frozen=True)
class DiscreteSchedule(Schedule):
    """DDPM-style beta schedule with ``num_steps`` training steps.

    ``alpha_bar`` at ``t = n / T`` equals ``prod_{i <= n} (1 - beta_i)`` exactly.
    """

    kind: str = "linear"
    num_steps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02

    def __post_init__(self):
        _discrete_table(self.kind, self.num_steps, self.beta_start, self.beta_end)  # validates

    @property
    def table(self) -> np.ndarray:
        """``[T + 1]`` float64 ``log alpha_bar_n``."""
        return _discrete_table(self.kind, self.num_steps, self.beta_start, self.beta_end)

    def log_alpha_bar(self, t: Array) -> Array:
        table = jnp.asarray(self.table, jnp.float32)
        u = jnp.clip(jnp.asarray(t, jnp.float32) * self.num_steps, 0.0, float(self.num_steps))
        lo = jnp.clip(jnp.floor(u), 0, self.num_steps - 1).astype(jnp.int32)
        frac = u - lo
        return table[lo] * (1.0 - frac) + table[lo + 1] * frac

    def t_from_log_alpha_bar(self, lab: Array) -> Array:
        # the table is decreasing; interpolate its inverse piecewise linearly.
        table = jnp.asarray(self.table, jnp.float32)
        grid = jnp.arange(self.num_steps + 1, dtype=jnp.float32) / self.num_steps
        return jnp.interp(-jnp.asarray(lab, jnp.float32), -table, grid)


@dataclasses.dataclass(frozen=True)
class CosineLogSNRSchedule(Schedule):
    """Continuous schedule ``logsnr(t) = -2 log tan(a t + b)`` (VDM / progressive distillation).

    ``a, b`` put ``logsnr(0) = logsnr_max`` and ``logsnr(1) = logsnr_min``.
    """

    logsnr_min: float = -20.0
    logsnr_max: float = 20.0

    def _ab(self) -> tuple[float, float]:
        b = math.atan(math.exp(-0.5 * self.logsnr_max))
        a = math.atan(math.exp(-0.5 * self.logsnr_min)) - b
        return a, b

    def logsnr(self, t: Array) -> Array:
        a, b = self._ab()
        return -2.0 * jnp.log(jnp.tan(a * jnp.asarray(t, jnp.float32) + b))

    def log_alpha_bar(self, t: Array) -> Array:
        return -jnp.logaddexp(0.0, -self.logsnr(t))  # log sigmoid(logsnr)

    def alpha_sigma(self, t: Array) -> tuple[Array, Array]:
        lam = self.logsnr(t)
        return jnp.sqrt(jax.nn.sigmoid(lam)), jnp.sqrt(jax.nn.sigmoid(-lam))

    def t_from_logsnr(self, logsnr: Array) -> Array:
        a, b = self._ab()
        return (jnp.arctan(jnp.exp(-0.5 * jnp.asarray(logsnr, jnp.float32))) - b) / a

    def t_from_log_alpha_bar(self, lab: Array) -> Array:
        lab = jnp.asarray(lab, jnp.float32)
        return self.t_from_logsnr(lab - jnp.log(-jnp.expm1(lab)))


SCHEDULES = ("linear", "scaled_linear", "cosine", "cosine_logsnr")


def make_schedule(name: str, num_steps: int = 1000, **kwargs) -> Schedule:
    """Builds a schedule by name: ``linear``, ``scaled_linear``, ``cosine`` (discrete,
    ``num_steps`` training steps) or ``cosine_logsnr`` (continuous)."""
    if name in ("linear", "scaled_linear", "cosine"):
        defaults = {"linear": (1e-4, 0.02), "scaled_linear": (0.00085, 0.012), "cosine": (0.0, 0.0)}
        start, end = defaults[name]
        return DiscreteSchedule(
            kind=name,
            num_steps=num_steps,
            beta_start=kwargs.pop("beta_start", start),
            beta_end=kwargs.pop("beta_end", end),
            **kwargs,
        )
    if name == "cosine_logsnr":
        return CosineLogSNRSchedule(**kwargs)
    raise ValueError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}")
