"""A diffusers ``scheduler_config.json`` -> the Kairos sampler that reproduces it.

Each scheduler class SD-family folders ship maps onto a solver and a grid that give its
chain to float32 rounding (tests/sampling/test_diffusers_schedulers.py):

=============================  ==============================================================
``DDIMScheduler``              ``ddim`` (eta 0)
``PNDMScheduler``              ``plms`` (``skip_prk_steps``; ``plms_combine=v`` for v networks)
``EulerDiscreteScheduler``     ``euler`` (``init_sigma=1`` for linspace / trailing spacing)
``EulerAncestralDiscrete...``  ``euler;ancestral=1``
``DPMSolverMultistep...``      ``dpmpp2m`` / ``dpmpp3m`` (``dpm_linspace``, ``dpm_leading``, trailing, ``dpm_karras``)
``UniPCMultistepScheduler``    ``unipc`` (order 2, bh2 / bh1; DPM-Solver's spacings)
``LCMScheduler``               ``consistency`` on the ``lcm`` grid
=============================  ==============================================================

Timestep spacing -> grid: DDIM / PNDM ``leading`` + ``steps_offset=1`` is ``leading``,
``leading`` + offset 0 ``uniform``, ``trailing`` is ``trailing``; the chain's end follows
``set_alpha_to_one`` (DDIM, PNDM: ``@1`` when false) or ``final_sigmas_type`` (the sigma
schedulers: ``@0`` for ``zero``). Euler's fractional ``linspace`` is the ``linspace`` grid,
``use_karras_sigmas`` the ``karras`` grid; DPM-Solver's and UniPC's ``use_karras_sigmas`` the
``dpm_karras`` grid (the same sigmas, the network told rounded timesteps).

A class with no solver here, or an option it cannot reproduce, yields the nearest sampler and a
note naming the class or option and the sampler written (never silent).
"""

from __future__ import annotations

from typing import Any

DETERMINISTIC = ("DDIMScheduler", "PNDMScheduler", "EulerDiscreteScheduler", "DPMSolverMultistepScheduler",
                 "UniPCMultistepScheduler", "LCMScheduler")
KNOWN = DETERMINISTIC + ("EulerAncestralDiscreteScheduler",)
# diffusers' other scheduler classes (0.42.1): imported with a note and the nearest sampler; a class
# name in neither list is not a diffusers scheduler, and the import refuses the folder
OTHER_DIFFUSERS = ("DDPMScheduler", "LMSDiscreteScheduler", "HeunDiscreteScheduler", "KDPM2DiscreteScheduler",
                   "KDPM2AncestralDiscreteScheduler", "DPMSolverSinglestepScheduler", "DPMSolverSDEScheduler",
                   "DEISMultistepScheduler", "TCDScheduler", "EDMEulerScheduler",
                   "EDMDPMSolverMultistepScheduler", "DDIMParallelScheduler", "DDPMParallelScheduler",
                   "SASolverScheduler", "IPNDMScheduler", "CosineDPMSolverMultistepScheduler",
                   "DDPMWuerstchenScheduler", "DDIMInverseScheduler", "CMStochasticIterativeScheduler")
DEFAULT_STEPS = {"LCMScheduler": 4}
DEFAULT_GUIDANCE = {"LCMScheduler": 1.0}


def _end(kind: str, own_end: int, end: int) -> str:
    """``kind`` with an ``@end`` suffix where ``end`` differs from the kind's own end."""
    return kind if end == own_end else f"{kind}@{end}"


def _ddim_family_grid(s: dict, cls: str, notes: list[str]) -> str:
    """The grid of DDIM / PNDM's integer spacings; the end follows ``set_alpha_to_one``."""
    spacing, offset = s.get("timestep_spacing", "leading"), int(s.get("steps_offset", 0))
    end = 0 if s.get("set_alpha_to_one", True) else 1
    if spacing == "leading" and offset in (0, 1):
        return _end("leading", 1, end) if offset == 1 else _end("uniform", 0, end)
    if spacing == "trailing":
        notes.append(f"{cls}: with trailing spacing diffusers steps from each timestep k to k - T // N, which is the "
                     "next timestep only where N divides num_train_timesteps; the trailing grid always steps to the "
                     "next (equal chains at N = 10, 20, 25, 50, ...)")
        return _end("trailing", 0, end)
    grid = _end("leading", 1, end)
    notes.append(f"{cls}: timestep_spacing={spacing!r} with steps_offset={offset} has no Kairos grid (linspace "
                 f"spacing rounds to training steps there); the sampler uses grid={grid}")
    return grid


def _sigma_family_grid(s: dict, cls: str, notes: list[str]) -> tuple[str, bool]:
    """``(grid, init_sigma)`` of Euler's spacings; the end follows ``final_sigmas_type``."""
    spacing, offset = s.get("timestep_spacing", "linspace"), int(s.get("steps_offset", 0))
    end = 1 if s.get("final_sigmas_type", "zero") == "sigma_min" else 0
    for option in ("use_exponential_sigmas", "use_beta_sigmas"):
        if s.get(option):
            notes.append(f"{cls}: {option}=true is not reproduced; the sampler uses its timestep spacing instead")
    if s.get("interpolation_type", "linear") != "linear":
        notes.append(f"{cls}: interpolation_type={s['interpolation_type']!r} is not reproduced; the sampler "
                     "interpolates sigma linearly")
    if s.get("timestep_type", "discrete") != "discrete":
        notes.append(f"{cls}: timestep_type={s['timestep_type']!r} is not reproduced; the network gets discrete "
                     "timesteps")
    if s.get("use_karras_sigmas"):
        if spacing != "linspace":
            notes.append(f"{cls}: Karras sigmas on timestep_spacing={spacing!r} start from that spacing's sigmas; "
                         "the karras grid spans the whole training range (the linspace spacing's)")
        return _end("karras", 0, end), True
    if spacing == "linspace":
        return _end("linspace", 0, end), True
    if spacing == "trailing":
        return _end("trailing", 0, end), True
    if spacing == "leading" and offset in (0, 1):
        return (_end("leading", 1, end) if offset == 1 else _end("uniform", 0, end)), False
    notes.append(f"{cls}: timestep_spacing={spacing!r} with steps_offset={offset} has no Kairos grid; the sampler "
                 "uses grid=linspace")
    return "linspace", True


def _dpm_grid(s: dict, cls: str, notes: list[str]) -> str:
    """The grid of DPM-Solver / UniPC's spacings; the end follows ``final_sigmas_type``."""
    spacing, offset = s.get("timestep_spacing", "linspace"), int(s.get("steps_offset", 0))
    end = 1 if s.get("final_sigmas_type", "zero") == "sigma_min" else 0
    if s.get("use_karras_sigmas"):  # the spacing is not read; the network gets rounded timesteps, but not on cosine
        grid = "karras" if s.get("beta_schedule") == "squaredcos_cap_v2" else "dpm_karras"
        if end == 1:
            notes.append(f"{cls}: final_sigmas_type='sigma_min' with Karras sigmas makes the last step go from "
                         f"sigma_min to sigma_min (no denoising); the sampler ends on the data (grid={grid})")
        return grid
    if s.get("lambda_min_clipped", float("-inf")) != float("-inf"):
        notes.append(f"{cls}: lambda_min_clipped={s['lambda_min_clipped']} is not reproduced; the grid spans every "
                     "training step")
    grids = {"linspace": "dpm_linspace", "trailing": "trailing"}
    if spacing == "leading" and offset == 1:
        grids["leading"] = "dpm_leading"
    grid = _end(grids.get(spacing, "dpm_linspace"), 0, end)
    if spacing not in grids:
        notes.append(f"{cls}: timestep_spacing={spacing!r} with steps_offset={offset} is not reproduced; the sampler "
                     f"uses grid={grid}")
    return grid


def _unipc(s: dict, cls: str, notes: list[str]) -> dict:
    variant = s.get("solver_type", "bh2")
    if variant not in ("bh1", "bh2"):
        notes.append(f"{cls}: solver_type={variant!r} is not reproduced; the sampler uses bh2")
        variant = "bh2"
    unsupported = [f"{k}={s[k]!r}" for k, default in (("solver_order", 2), ("predict_x0", True),
                                                      ("disable_corrector", []), ("solver_p", None)) if k in s and s[k] != default]
    if s.get("final_sigmas_type") == "sigma_min" and s.get("lower_order_final", True):
        unsupported.append("lower_order_final on a chain ending at sigma_min (unipc lowers only a step onto t = 0)")
    if unsupported:
        notes.append(f"{cls}: {', '.join(unsupported)} not reproduced; the sampler uses unipc (order 2, data "
                     "prediction, the corrector on every step)")
    return {"solver": "unipc", "grid": _dpm_grid(s, cls, notes), "unipc_variant": variant}


def _dpm(s: dict, cls: str, notes: list[str]) -> dict:
    algorithm, order = s.get("algorithm_type", "dpmsolver++"), int(s.get("solver_order", 2))
    solver = "dpmpp3m" if order == 3 else "dpmpp2m"
    if algorithm != "dpmsolver++":
        notes.append(f"{cls}: algorithm_type={algorithm!r} is not reproduced; the sampler uses {solver} "
                     "(DPM-Solver++ in data prediction)")
    if order not in (2, 3):
        notes.append(f"{cls}: solver_order={order} is not reproduced; the sampler uses {solver}")
    if s.get("solver_type", "midpoint") != "midpoint" or s.get("euler_at_final"):
        notes.append(f"{cls}: solver_type / euler_at_final as configured are not reproduced; the "
                     f"sampler uses {solver} with midpoint updates")
    if order == 3 and s.get("lower_order_final", True):
        notes.append(f"{cls}: lower_order_final lowers the second-to-last 3M step to order 2 below 15 steps; "
                     f"{solver} keeps order 3 there")
    return {"solver": solver, "grid": _dpm_grid(s, cls, notes)}


def sampler_for(s: dict[str, Any], pred_type: str) -> tuple[dict, list[str]]:
    """``({solver, grid, steps, guidance, knobs...}, notes)``: the sampler that reproduces the
    scheduler of config ``s`` on a ``pred_type`` (``eps`` / ``v`` / ``x0``) network.

    Raises:
      ValueError: a class name that is not a diffusers scheduler."""
    cls = str(s.get("_class_name", "DDIMScheduler"))
    if cls not in KNOWN and cls not in OTHER_DIFFUSERS:
        raise ValueError(f"scheduler class {cls!r} is not a diffusers scheduler (known: {', '.join(KNOWN)}, and "
                         f"{len(OTHER_DIFFUSERS)} more that import with the nearest sampler); is this folder's "
                         "scheduler_config.json damaged?")
    notes: list[str] = []
    values: dict[str, Any] = {"steps": DEFAULT_STEPS.get(cls, 50), "guidance": DEFAULT_GUIDANCE.get(cls, 7.5)}
    if cls == "DDIMScheduler":
        values.update(solver="ddim", grid=_ddim_family_grid(s, cls, notes))
        if s.get("clip_sample"):
            notes.append(f"{cls}: clip_sample=true clips x0 but keeps the network's eps; Kairos' clip_x0 recomputes "
                         "eps from the clipped x0, so the sampler leaves it off")
    elif cls == "PNDMScheduler":
        values.update(solver="plms", grid=_ddim_family_grid(s, cls, notes))
        if pred_type == "v":
            values["plms_combine"] = "v"
        if not s.get("skip_prk_steps", False):
            notes.append(f"{cls}: skip_prk_steps=false (the pseudo Runge-Kutta warm start) is not reproduced; the "
                         "sampler uses plms, the skip_prk_steps=true chain Stable Diffusion runs")
    elif cls in ("EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler"):
        grid, init_sigma = _sigma_family_grid(s, cls, notes)
        values.update(solver="euler", grid=grid)
        if cls == "EulerAncestralDiscreteScheduler":
            values["ancestral"] = 1
        if init_sigma:
            values["init_sigma"] = 1
        if cls == "EulerDiscreteScheduler" and s.get("s_churn"):
            notes.append(f"{cls}: s_churn is a step argument Kairos' euler does not take; the sampler has no churn")
    elif cls == "DPMSolverMultistepScheduler":
        values.update(_dpm(s, cls, notes))
    elif cls == "UniPCMultistepScheduler":
        values.update(_unipc(s, cls, notes))
    elif cls == "LCMScheduler":
        values.update(solver="consistency", grid="lcm")
        notes.append(f"{cls}: the scheduler's boundary coefficients (c_skip, c_out) are not applied to an imported "
                     "network (Kairos applies them inside its own consistency students); they are below 4e-8 at "
                     "t >= 0.26, every time of the 4-step lcm grid")
        if int(s.get("original_inference_steps", 50)) != 50:
            notes.append(f"{cls}: original_inference_steps={s['original_inference_steps']} is not reproduced; the "
                         "lcm grid's lattice has 50 points")
    else:
        values.update(solver="ddim", grid="leading")
        notes.append(f"{cls} has no Kairos solver; the sampler written is ddim on the leading grid (solvers: ddim, "
                     "plms, euler, dpmpp2m, dpmpp3m, unipc, consistency)")
    return values, notes


def sampler_string(values: dict[str, Any]) -> str:
    """``solver=...;steps=...;grid=...;...`` in a fixed key order."""
    first = ("solver", "steps", "grid")
    keys = list(first) + sorted(k for k in values if k not in first)
    return ";".join(f"{k}={values[k]}" for k in keys)


# ------------------------------------------------------------------------------------------ export: the other way

_DDIM_FAMILY_SPACING = {"leading": ("leading", 1, False), "leading@0": ("leading", 1, True),
                        "uniform": ("leading", 0, True), "uniform@1": ("leading", 0, False),
                        "trailing": ("trailing", 0, True), "trailing@1": ("trailing", 0, False)}
_EULER_SPACING = {"linspace": ("linspace", 0, False), "karras": ("linspace", 0, True), "leading@0": ("leading", 1, False),
                  "uniform": ("leading", 0, False), "trailing": ("trailing", 0, False)}


def scheduler_config(spec, diffusion: dict, pred_type: str) -> tuple[dict, list[str]]:
    """``(scheduler_config.json, notes)``: the diffusers scheduler whose chain is ``spec``'s solver
    on its grid (the inverse of :func:`sampler_for`); what diffusers cannot run (a time shift, reuse,
    a grid it has no spacing for) is left out with a note naming it. ``diffusion``: the run's
    ``config.diffusion`` (betas and training steps)."""
    notes = []
    base = {"num_train_timesteps": int(diffusion["num_steps"]), "beta_start": float(diffusion["beta_start"]),
            "beta_end": float(diffusion["beta_end"]), "beta_schedule": diffusion["schedule"],
            "prediction_type": {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}[pred_type]}
    knobs, grid = dict(spec.solver_knobs), spec.grid
    for name, _ in spec.transforms:
        if name != "guidance":
            notes.append(f"the sampler's {name} has no diffusers scheduler: the folder samples without it")
    if spec.solver in ("ddim", "plms") and grid in _DDIM_FAMILY_SPACING:
        spacing, offset, alpha_one = _DDIM_FAMILY_SPACING[grid]
        cls = "DDIMScheduler" if spec.solver == "ddim" else "PNDMScheduler"
        config = {**base, "_class_name": cls, "timestep_spacing": spacing, "steps_offset": offset,
                  "set_alpha_to_one": alpha_one}
        if cls == "DDIMScheduler":
            config["clip_sample"] = False
            if knobs.get("eta") or knobs.get("clip_x0"):
                notes.append("ddim's eta and clip_x0 are arguments of diffusers' step, not of its config: the folder "
                             "samples with eta 0 and no clipping")
        else:
            config["skip_prk_steps"] = True
            if knobs.get("combine", "eps") != ("v" if pred_type == "v" else "eps"):
                notes.append("plms_combine differs from what diffusers combines for this network")
        return config, notes
    if spec.solver == "euler" and grid in _EULER_SPACING:
        spacing, offset, karras = _EULER_SPACING[grid]
        ancestral = bool(knobs.get("ancestral"))
        cls = "EulerAncestralDiscreteScheduler" if ancestral else "EulerDiscreteScheduler"
        config = {**base, "_class_name": cls, "timestep_spacing": spacing, "steps_offset": offset}
        if not ancestral:
            config["use_karras_sigmas"] = karras
        elif karras:
            notes.append("Euler ancestral on Karras sigmas: diffusers' EulerAncestralDiscreteScheduler is written "
                         "on its linspace spacing")
        if bool(knobs.get("init_sigma")) != (spacing in ("linspace", "trailing")):
            notes.append(f"init_sigma={knobs.get('init_sigma')} differs from diffusers' start on {spacing} spacing")
        return config, notes
    dpm_spacing = {"trailing": ("trailing", 0), "dpm_linspace": ("linspace", 0), "dpm_leading": ("leading", 1),
                   "dpm_karras": ("linspace", 0)}
    karras = {"use_karras_sigmas": grid == "dpm_karras"}
    if spec.solver in ("dpmpp2m", "dpmpp3m") and grid in dpm_spacing:
        order = 2 if spec.solver == "dpmpp2m" else 3
        spacing, offset = dpm_spacing[grid]
        return {**base, "_class_name": "DPMSolverMultistepScheduler", "algorithm_type": "dpmsolver++",
                "solver_order": order, "timestep_spacing": spacing, "steps_offset": offset,
                "lower_order_final": order == 2, **karras}, notes
    if spec.solver == "unipc" and grid in dpm_spacing:
        spacing, offset = dpm_spacing[grid]
        return {**base, "_class_name": "UniPCMultistepScheduler", "solver_order": 2, "predict_x0": True,
                "solver_type": knobs.get("variant", "bh2"), "timestep_spacing": spacing, "steps_offset": offset,
                "lower_order_final": True, **karras}, notes
    if spec.solver == "consistency" and grid == "lcm":
        return {**base, "_class_name": "LCMScheduler", "original_inference_steps": 50}, notes
    notes.append(f"solver {spec.solver} on grid {grid} has no diffusers scheduler: the folder gets DDIM on the leading "
                 "spacing (steps_offset 1), the plain scheduler")
    return {**base, "_class_name": "DDIMScheduler", "timestep_spacing": "leading", "steps_offset": 1,
            "set_alpha_to_one": False, "clip_sample": False}, notes
