"""Sampling time grids: ``[N + 1]`` decreasing times ending at ``0``.

* ``uniform``: the DDIM paper's uniform skip on the ``T``-step training grid: network
  times ``n = 1, 1 + k, 1 + 2k, ...`` (``k = T // N``), largest first, then ``0``: Song's
  DDIM code (0-based indices ``range(0, T, k)``, our ``n = i + 1``) and ADM's ``ddimN``;
  it does not start at pure noise. (Not the grid of TS-DPM's PNM samplers: ``tsdpm``.)
* ``tsdpm``: the grid of TS-DPM's released PNM samplers (``pnm_solver._make_time_steps``,
  Mingxiao-Li/TS-DPM ``sampler/pnm_solver.py:86-98, 143``): for the authors' ``S``, the
  0-based indices ``range(0, T, T // S) + 1`` without the last, i.e. ``1, 1 + k, ...,
  (S - 2) k + 1``, then index ``0``; in our steps ``n = i + 1``: ``2, 2 + k, ...``, ending on
  ``t = 1 / T`` (``alphas_cump[0]``), not on ``0``. ``N`` steps are the authors' ``S = N + 1``
  (their "S = 10" runs 9 steps: ``tsdpm`` with 9 steps, ``802 -> 702 -> ... -> 2 -> 1``);
  ``k = T // (N + 1)``, the released grid exactly wherever ``N + 1`` divides ``T``.
* ``adm``: ADM's ``space_timesteps(T, [N])`` (guided-diffusion ``respace.py``; FVDM's
  ``diffusion/respace.py:12-62``): a float stride ``(T - 1) / (N - 1)`` accumulated and
  rounded (half to even) at each point, 0-based indices ``0 ... T - 1``, our ``n = i + 1``,
  then ``0`` (the respaced chain's last ``alpha_bar_prev`` is 1). 50 steps: ``1000, 980,
  959, ..., 21, 1``; it starts at pure noise.
* ``leading``: diffusers' DDIM / PNDM "leading" spacing as Stable Diffusion 1.x / 2.x
  configure it (``steps_offset=1``, ``set_alpha_to_one=False``): diffusers timesteps
  ``k = i (T // N) + 1`` are our ``t = (k + 1) / T``, and the last step lands on
  ``alphas_cumprod[0]``, i.e. ``t = 1 / T``, not on ``0`` (the one grid that does not end at 0).
* ``trailing``: ``N`` equal steps from ``t = 1`` (diffusers' "trailing"; starts at pure noise).
* ``quadratic``: the DDIM paper's quadratic spacing ``n_i ~ (i * sqrt(0.8 T) / (N - 1))^2``,
  dense near the data, up to ``0.8 T`` as in its released code (times that would repeat
  near ``t = 0`` are pushed apart by one training step).
* ``lcm``: LCM's multistep sampling times on its training lattice (diffusers'
  ``LCMScheduler.set_timesteps``, ``scheduling_lcm.py:459, 537-541``, 0.42.1): the
  ``LCM_SKIP = 50``-point skip lattice a consistency student is trained on
  (``distill/consistency.py``; LCM's ``num_ddim_timesteps``), points ``j T / 50``, reversed,
  at the indices ``floor(linspace(0, 50, N, endpoint=False))``; diffusers' timestep ``d`` is
  our ``T t = d + 1``. 4 steps: ``1, .76, .5, .26``; 8: ``1, .88, .76, .64, .5, .38, .26, .14``.
* ``linspace``: diffusers' Euler / Euler-ancestral ``linspace`` spacing (SD 2.x's 768-v
  folder): fractional timesteps ``tau = linspace(0, T - 1, N)`` reversed, our ``t = (tau + 1) / T``,
  then ``0``. Its times sit between training steps, where diffusers interpolates ``sigma``
  linearly: a sampler on this grid reads the schedule that way (:func:`sampling_schedule`).
* ``karras``: Karras et al.'s sigmas (``rho = 7``) from the largest to the smallest training
  sigma (diffusers' ``use_karras_sigmas`` on the ``linspace`` spacing), each placed at the time
  whose ``log sigma`` interpolates the table (diffusers' ``_sigma_to_t``), then ``0``; sampled
  with the ``log sigma`` reading of the schedule, so the solver steps on the Karras sigmas.
* ``dpm_karras``: the ``karras`` grid as diffusers' DPM-Solver multistep (and UniPC) runs it
  with ``use_karras_sigmas``: the solver steps on the same Karras sigmas, but the network is
  told the timesteps rounded to training steps (``SigmaInterpolated.round_network_time``).
* ``dpm_linspace``, ``dpm_leading``: the spacings of diffusers' DPM-Solver multistep (and
  UniPC, DEIS) schedulers: ``N + 1`` training steps, rounded, the last (``0``) dropped:
  ``round(linspace(0, T - 1, N + 1))`` reversed, and ``k (T // (N + 1)) + 1`` (``steps_offset=1``)
  reversed; our ``t = (tau + 1) / T``, then ``0``.
* ``logsnr``: uniform in log-SNR from ``t = 1`` to ``t = 1 / T`` (DPM-Solver's choice;
  continuous times, not snapped to the training grid).

The last entry is ``0`` (the final step returns the data prediction), except for
``leading`` and ``tsdpm``, which reproduce Stable Diffusion's DDIM / PNDM schedulers and
TS-DPM's PNM samplers: they end on ``t = 1 / T``. A suffix sets the end of any grid:
``@0`` ends on the data (``leading@0``: SDXL's Euler scheduler, whose last sigma is 0),
``@1`` on the first training step (``trailing@1``: a DDIM scheduler with
``set_alpha_to_one=False``, DPM-Solver's ``final_sigmas_type="sigma_min"``).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from diffusion.schedules import DiscreteSchedule, Schedule
from diffusion.sigma_schedule import SigmaInterpolated, sigma_table

GRIDS = ("uniform", "leading", "trailing", "quadratic", "logsnr", "tsdpm", "adm", "lcm", "linspace", "karras",
         "dpm_karras", "dpm_linspace", "dpm_leading")
ENDS = {"0": 0, "1": 1}  # a grid's "@E" suffix: its last time in training steps
KARRAS_RHO = 7.0
LCM_SKIP = 50  # the lcm grid's lattice: LCM's num_ddim_timesteps, distill.num_skip of a consistency student
ENDS_AT_ONE_STEP = ("leading", "tsdpm")  # grids whose last time is 1 / T, not 0


def trailing_time(j, n, T: int):
    """Point ``j`` of the ``n``-step trailing grid on a ``T``-step lattice:
    ``round(T (n - j) / n) / T`` (round half to even), for int arrays ``j`` (``0..n``)
    and ``n`` (traced or not). Exact integer arithmetic: the even points of the ``2n``
    grid are the ``n`` grid, which progressive distillation relies on."""
    num = jnp.asarray(T) * (jnp.asarray(n) - jnp.asarray(j))
    q, r = num // n, num % n
    up = (2 * r > n) | ((2 * r == n) & (q % 2 == 1))
    return (q + up.astype(q.dtype)).astype(jnp.float32) / T


def lcm_times(n: int, T: int, skip: int = LCM_SKIP) -> np.ndarray:
    """``[n]`` decreasing network times of LCM's multistep sampler on a ``skip``-interval
    lattice of ``T`` steps: the lattice ``trailing_time(j, skip, T)``, ``j = 0..skip - 1``
    (largest first; the times consistency distillation trains at), at the indices
    ``floor(linspace(0, skip, n, endpoint=False))`` (diffusers' ``LCMScheduler``)."""
    if not 1 <= n <= skip:
        raise ValueError(f"the lcm grid has {skip} lattice times; {n} steps need 1 <= steps <= {skip}")
    lattice = np.asarray(trailing_time(np.arange(skip), skip, T), np.float64)
    return lattice[np.floor(np.linspace(0, skip, num=n, endpoint=False)).astype(np.int64)]


def split_grid(name: str) -> tuple[str, int | None]:
    """``"leading@0" -> ("leading", 0)``; ``"trailing" -> ("trailing", None)`` (the kind's own end).
    Raises ValueError naming the grids for an unknown kind or end."""
    kind, sep, end = str(name).partition("@")
    if kind not in GRIDS:
        raise ValueError(f"unknown time grid {name!r}; expected one of {', '.join(GRIDS)}, optionally with @0 "
                         "(end on the data) or @1 (end on the first training step)")
    if sep and end not in ENDS:
        raise ValueError(f"bad time grid end {name!r}: the suffix is @0 (end on the data) or @1 (the first "
                         "training step)")
    return kind, (ENDS[end] if sep else None)


def check_grid(name: str) -> str:
    """``name`` if it names a grid (kind and optional ``@E`` end), else ValueError."""
    split_grid(name)
    return name


def sampling_schedule(name: str, schedule: Schedule) -> Schedule:
    """The schedule a sampler on grid ``name`` reads: diffusers' reading between training steps
    for the grids whose times are fractional diffusers timesteps (``linspace``: sigma linear;
    ``karras``: log sigma linear; ``dpm_karras``: that, with the network told rounded timesteps;
    ``diffusion.sigma_schedule``), else ``schedule`` itself."""
    kind, _ = split_grid(name)
    if kind in ("linspace", "karras", "dpm_karras") and isinstance(schedule, DiscreteSchedule):
        return SigmaInterpolated(schedule, "sigma" if kind == "linspace" else "log_sigma",
                                 round_network_time=kind == "dpm_karras")
    return schedule


def karras_times(n: int, schedule: DiscreteSchedule, rho: float = KARRAS_RHO) -> np.ndarray:
    """``[n]`` decreasing times of Karras' sigmas between the largest and the smallest training sigma,
    placed where ``log sigma`` interpolates the table (diffusers' ``_convert_to_karras``, ``_sigma_to_t``)."""
    table = sigma_table(schedule)
    ramp = np.linspace(0, 1, n)
    lo, hi = table[0] ** (1 / rho), table[-1] ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    tau = np.interp(np.log(sigmas), np.log(table), np.arange(len(table), dtype=np.float64))
    return (tau + 1.0) / schedule.num_steps


def _adm_indices(T: int, n: int) -> np.ndarray:
    """ADM's ``space_timesteps(T, [n])``: 0-based indices, increasing (its float loop as written)."""
    stride = 1 if n <= 1 else (T - 1) / (n - 1)
    cur, out = 0.0, []
    for _ in range(n):
        out.append(round(cur))  # Python's round: half to even, as ADM
        cur += stride
    return np.asarray(sorted(set(out)), np.int64)


def _network_times(kind: str, n: int, schedule: Schedule) -> np.ndarray:
    T = schedule.T  # continuous schedules: the same rule on a 1000-step lattice
    if kind == "uniform":
        k = max(T // n, 1)
        steps = (np.arange(0, T, k)[:n] + 1)[::-1]
        return steps / T
    if kind == "leading":
        return (np.arange(n)[::-1] * (T // n) + 2) / T
    if kind == "trailing":
        return np.asarray(trailing_time(np.arange(n), n, T), np.float64)
    if kind == "quadratic":
        steps = (np.linspace(0, np.sqrt(0.8 * T), n) ** 2).astype(int) + 1
        steps = np.maximum.accumulate(steps - np.arange(n)) + np.arange(n)  # no repeats near t = 0
        return steps[::-1] / T
    if kind == "tsdpm":
        k = max(T // (n + 1), 1)
        return (np.arange(n)[::-1] * k + 2) / T  # the authors' index k j + 1, our step k j + 2
    if kind == "adm":
        return (_adm_indices(T, n)[::-1] + 1) / T
    if kind == "lcm":
        return lcm_times(n, T)
    if kind == "linspace":
        tau = np.linspace(0, T - 1, n, dtype=np.float32)[::-1].astype(np.float64)  # diffusers' float32 timesteps
        return (tau + 1.0) / T
    if kind == "dpm_linspace":
        tau = np.linspace(0, T - 1, n + 1).round()[::-1][:-1]
        return (tau + 1.0) / T
    if kind == "dpm_leading":
        tau = (np.arange(n + 1) * (T // (n + 1))).round()[::-1][:-1] + 1
        return (tau + 1.0) / T
    if kind in ("karras", "dpm_karras"):
        if not isinstance(schedule, DiscreteSchedule):
            raise ValueError(f"the {kind} grid places sigmas on a discrete schedule's training steps; this model's "
                             f"schedule is continuous ({type(schedule).__name__}): use logsnr")
        return karras_times(n, schedule)
    if kind == "logsnr":
        hi, lo = float(schedule.logsnr(jnp.asarray(1.0 / T))), float(schedule.logsnr(jnp.asarray(1.0)))
        return np.asarray(schedule.t_from_logsnr(jnp.linspace(lo, hi, n)), np.float64)
    raise ValueError(f"unknown time grid {kind!r}; expected one of {', '.join(GRIDS)}")


def make_grid(kind: str, num_steps: int, schedule: Schedule) -> jnp.ndarray:
    """``[num_steps + 1]`` decreasing times: ``num_steps`` network times, then ``0`` (``1 / T``
    for ``ENDS_AT_ONE_STEP``).

    Args:
      kind: one of ``GRIDS`` (module docstring), optionally with an ``@0`` / ``@1`` end.
      num_steps: steps of a first-order solver (= network calls), >= 1.
      schedule: the model's noise schedule.
    """
    kind, end = split_grid(kind)
    schedule = schedule.base if isinstance(schedule, SigmaInterpolated) else schedule
    if num_steps < 1:
        raise ValueError(f"need at least 1 sampling step, got {num_steps}")
    if schedule.num_steps and num_steps > schedule.num_steps:
        raise ValueError(f"{num_steps} steps exceed the {schedule.num_steps} steps of the training schedule")
    times = _network_times(kind, num_steps, schedule)
    if end is None:
        end = 1 if kind in ENDS_AT_ONE_STEP else 0
    last = end / schedule.T
    if times[0] > 1.0:
        raise ValueError(f"the {kind!r} grid with {num_steps} steps starts past t = 1 on a {schedule.T}-step "
                         "schedule (its index offset, diffusers' steps_offset or the authors' + 1, pushes its first "
                         "timestep past T); use fewer steps")
    if len(np.unique(times)) != num_steps or np.any(np.diff(times) >= 0) or times[-1] <= last:
        raise ValueError(f"the {kind!r} grid with {num_steps} steps repeats times on a {schedule.num_steps}-step "
                         "schedule; use fewer steps or another grid")
    return jnp.asarray(np.concatenate([times, [last]]), jnp.float32)
