"""A discrete schedule read the way diffusers' sigma-space schedulers read it between steps.

diffusers' Euler, Euler-ancestral and Karras-sigma schedulers work with
``sigma_k = sqrt((1 - alpha_bar_k) / alpha_bar_k)`` on the training steps ``k = 0..T-1``
and place fractional timesteps ``tau`` by interpolating that table: linearly in ``sigma``
(``EulerDiscreteScheduler``'s ``interpolation_type="linear"``, its ``linspace`` spacing) or
linearly in ``log sigma`` (``_sigma_to_t``, which places Karras sigmas). Kairos' own
:class:`~diffusion.schedules.DiscreteSchedule` interpolates ``log alpha_bar`` instead; the
two agree on the training steps and differ between them by up to 7e-5 (relative, SD's betas).
A grid with fractional diffusers timesteps (``linspace``, ``karras``; ``sampling.grids``)
samples with this view, so the network sees the input scaling diffusers gives it and the
solver moves on diffusers' sigmas (docs/design/diffusers_schedulers.md).

Time convention as everywhere: diffusers' timestep ``tau`` is our ``t = (tau + 1) / T``.
Below ``t = 1 / T`` (only ``t = 0`` is ever used there) the base schedule is read.

diffusers' DPM-Solver multistep with Karras sigmas steps on the Karras sigmas but hands the
network the timesteps rounded to the training steps (``timesteps.round()`` in its
``set_timesteps``): ``round_network_time=True`` tells the network ``(round(tau) + 1) / T``
(:meth:`network_time`) while the prediction is read at the unrounded time.
"""

from __future__ import annotations

import dataclasses
import functools

import jax.numpy as jnp
import numpy as np

from diffusion.schedules import DiscreteSchedule, Schedule

INTERPOLATIONS = ("sigma", "log_sigma")


@functools.lru_cache(maxsize=None)
def sigma_table(base: DiscreteSchedule) -> np.ndarray:
    """``[T]`` float64 ``sigma_k = sqrt(1 / alpha_bar_k - 1)`` for diffusers' timesteps ``k = 0..T-1``
    (our steps ``n = k + 1``), increasing."""
    return np.sqrt(np.expm1(-base.table[1:]))


@dataclasses.dataclass(frozen=True)
class SigmaInterpolated(Schedule):
    """``base`` on its training steps; between them ``sigma`` (``interpolation="sigma"``) or
    ``log sigma`` (``"log_sigma"``) is linear in the timestep. Hashable by value (a static
    field of a denoiser)."""

    base: DiscreteSchedule = dataclasses.field(default_factory=DiscreteSchedule)
    interpolation: str = "sigma"
    round_network_time: bool = False

    def __post_init__(self):
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"unknown sigma interpolation {self.interpolation!r}; expected one of {INTERPOLATIONS}")
        if not isinstance(self.base, DiscreteSchedule):
            raise ValueError(f"sigma interpolation reads a discrete schedule's table, not {type(self.base).__name__}")

    @property
    def num_steps(self) -> int:  # type: ignore[override]
        return self.base.num_steps

    def _table(self):
        table = sigma_table(self.base)
        return jnp.asarray(np.log(table) if self.interpolation == "log_sigma" else table, jnp.float32)

    def sigma_ve(self, t):
        """diffusers' ``sigma`` at ``t >= 1 / T`` (shape of ``t``): the table interpolated at ``tau = T t - 1``."""
        tau = jnp.asarray(t, jnp.float32) * self.num_steps - 1.0
        value = jnp.interp(tau, jnp.arange(self.num_steps, dtype=jnp.float32), self._table())
        return jnp.exp(value) if self.interpolation == "log_sigma" else value

    def network_time(self, t):
        """``t``, or with ``round_network_time`` the nearest training step ``(round(T t - 1) + 1) / T``
        (half to even, as numpy's ``round``) at ``t >= 1 / T``."""
        if not self.round_network_time:
            return t
        t = jnp.asarray(t, jnp.float32)
        rounded = (jnp.round(t * self.num_steps - 1.0) + 1.0) / self.num_steps
        return jnp.where(self._on_table(t), rounded, t)

    def _on_table(self, t):
        return jnp.asarray(t, jnp.float32) * self.num_steps >= 1.0

    def alpha_sigma(self, t):
        """``(1, s) / sqrt(1 + s^2)`` with ``s = sigma_ve(t)`` at ``t >= 1 / T`` (diffusers' input scaling);
        the base schedule below."""
        s = self.sigma_ve(t)
        scale = jnp.sqrt(1.0 + s * s)
        base_alpha, base_sigma = self.base.alpha_sigma(t)
        on = self._on_table(t)
        return jnp.where(on, 1.0 / scale, base_alpha), jnp.where(on, s / scale, base_sigma)

    def log_alpha_bar(self, t):
        s = self.sigma_ve(t)
        return jnp.where(self._on_table(t), -jnp.log1p(s * s), self.base.log_alpha_bar(t))

    def t_from_log_alpha_bar(self, lab):
        lab = jnp.asarray(lab, jnp.float32)
        s = jnp.sqrt(jnp.expm1(-lab))
        table = self._table()
        x = jnp.log(s) if self.interpolation == "log_sigma" else s
        tau = jnp.interp(x, table, jnp.arange(self.num_steps, dtype=jnp.float32))
        smallest = float(sigma_table(self.base)[0])
        return jnp.where(s >= smallest, (tau + 1.0) / self.num_steps, self.base.t_from_log_alpha_bar(lab))
