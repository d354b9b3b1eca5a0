"""The schedulers Stable Diffusion-family folders ship, as Kairos solvers, against diffusers
0.42.1's schedulers on the same network (the exact Gaussian-mixture denoiser read as an eps or
v network of the timestep) and the same noise: the same chain to float32 rounding (issue 27).

Each case builds our sampler the way ``launch.sample`` does (``SamplerSpec.build``: a grid of
fractional timesteps gives the denoiser and the solver diffusers' sigma reading) and runs
diffusers' scheduler loop (``scale_model_input``, the network, ``step``) from the same noise
times its ``init_noise_sigma``."""

import numpy as np
import pytest

from tests.sampling.diffusers_chain import PRED, SD, SD_BETAS, T, close, diffusers, ours, solver_noises, theirs


# (diffusers spacing and options, our grid, our knobs)
EULER_CASES = [
    (dict(timestep_spacing="linspace"), "linspace", dict(init_sigma=1)),  # SD 2.x's 768-v folder
    (dict(timestep_spacing="leading", steps_offset=1), "leading@0", {}),  # SDXL's folder
    (dict(timestep_spacing="trailing"), "trailing", dict(init_sigma=1)),
    (dict(timestep_spacing="linspace", use_karras_sigmas=True), "karras", dict(init_sigma=1)),
]


@pytest.mark.parametrize("pred_type", ["eps", "v"])
@pytest.mark.parametrize("options,grid,knobs", EULER_CASES, ids=lambda c: c if isinstance(c, str) else None)
def test_euler_equals_euler_discrete_scheduler(options, grid, knobs, pred_type):
    sched = diffusers.EulerDiscreteScheduler(**SD_BETAS, prediction_type=PRED[pred_type], **options)
    close(ours("euler", 25, grid, pred_type, **knobs), theirs(sched, 25, pred_type))


@pytest.mark.parametrize("pred_type,options,grid,knobs", [
    ("eps", dict(timestep_spacing="linspace"), "linspace", dict(init_sigma=1)),
    ("v", dict(timestep_spacing="leading", steps_offset=1), "leading@0", {}),
])
def test_euler_ancestral_equals_diffusers_with_the_same_noise(pred_type, options, grid, knobs, monkeypatch):
    module = pytest.importorskip("diffusers.schedulers.scheduling_euler_ancestral_discrete")
    sched = diffusers.EulerAncestralDiscreteScheduler(**SD_BETAS, prediction_type=PRED[pred_type], **options)
    want = theirs(sched, 20, pred_type, solver_noises(20), module, monkeypatch)
    close(ours("euler", 20, grid, pred_type, ancestral=1, **knobs), want)


@pytest.mark.parametrize("pred_type", ["eps", "v"])
@pytest.mark.parametrize("steps", [2, 3, 25])
def test_plms_equals_sd_pndm_scheduler(pred_type, steps):
    """SD 1.x's stock scheduler config: PNDM, skip_prk_steps, leading spacing, steps_offset 1,
    set_alpha_to_one False (our ``leading`` grid ends on alphas_cumprod[0]). For a v network
    diffusers combines the raw v outputs (``plms_combine=v``)."""
    sched = diffusers.PNDMScheduler(**SD_BETAS, prediction_type=PRED[pred_type], skip_prk_steps=True,
                                    steps_offset=1, set_alpha_to_one=False)
    knobs = {"plms_combine": "v"} if pred_type == "v" else {}
    close(ours("plms", steps, "leading", pred_type, **knobs), theirs(sched, steps, pred_type))


def test_euler_is_ddim_in_other_arithmetic():
    """Deterministic Euler in sigma space is the DDIM step: the same chain on the same grid."""
    close(ours("euler", 20, "trailing", "eps"), ours("ddim", 20, "trailing", "eps"), 2e-6, 2e-5)


def test_plms_counts_its_extra_first_call():
    from sampling.spec import make_spec as spec

    assert spec("plms", 25, "leading").network_calls(SD) == 26


def test_sigma_grids_place_diffusers_sigmas():
    """The linspace grid's fractional times read diffusers' linearly interpolated sigmas, the
    karras grid's times read back the Karras sigmas (diffusers' float32 tables: rtol 2e-5)."""
    from sampling.grids import make_grid, sampling_schedule

    for kind, options in (("linspace", {}), ("karras", dict(use_karras_sigmas=True))):
        sched = diffusers.EulerDiscreteScheduler(**SD_BETAS, **options)
        sched.set_timesteps(30)
        grid = make_grid(kind, 30, SD)
        alpha, sigma = sampling_schedule(kind, SD).alpha_sigma(grid)
        np.testing.assert_allclose(np.asarray(sigma / alpha), sched.sigmas.numpy(), rtol=2e-5, atol=1e-7)
        np.testing.assert_allclose(np.asarray(grid[:-1]) * T - 1, sched.timesteps.numpy(), atol=3e-3)


@pytest.mark.parametrize("order,steps", [(2, 20), (3, 20), (2, 8)])
def test_dpm_solver_pp_equals_dpm_solver_multistep_on_trailing(order, steps):
    """DPMSolverMultistepScheduler (dpmsolver++, midpoint, final sigma zero) on the trailing spacing;
    lower_order_final off for 3M (its second-to-last order-2 step below 15 steps is not ours)."""
    sched = diffusers.DPMSolverMultistepScheduler(**SD_BETAS, solver_order=order, timestep_spacing="trailing",
                                                  lower_order_final=order == 2)
    close(ours(f"dpmpp{order}m", steps, "trailing", "eps"), theirs(sched, steps, "eps"))


@pytest.mark.parametrize("spacing,grid", [("linspace", "dpm_linspace"), ("leading", "dpm_leading")])
def test_dpm_solver_pp_on_dpm_solvers_own_spacings(spacing, grid):
    """DPMSolverMultistepScheduler's default linspace spacing and SD's leading one (steps_offset 1):
    N + 1 rounded training steps, the last dropped."""
    sched = diffusers.DPMSolverMultistepScheduler(**SD_BETAS, timestep_spacing=spacing, steps_offset=1,
                                                  prediction_type=PRED["v"])
    close(ours("dpmpp2m", 15, grid, "v"), theirs(sched, 15, "v"))


@pytest.mark.parametrize("solver,pred_type,steps", [("dpmpp2m", "eps", 20), ("dpmpp2m", "v", 8), ("dpmpp3m", "eps", 15),
                                                     ("unipc", "eps", 12)])
def test_multistep_solvers_on_karras_sigmas_as_diffusers_rounds_them(solver, pred_type, steps):
    """DPM-Solver++ ("DPM++ 2M Karras") and UniPC with ``use_karras_sigmas``: the dpm_karras grid
    steps on the Karras sigmas and tells the network the rounded timesteps, as diffusers does;
    the karras grid (unrounded times) misses diffusers' chain, so the rounding is what is tested."""
    cls = diffusers.UniPCMultistepScheduler if solver == "unipc" else diffusers.DPMSolverMultistepScheduler
    options = {} if solver == "unipc" else dict(solver_order=int(solver[5]))
    sched = cls(**SD_BETAS, use_karras_sigmas=True, prediction_type=PRED[pred_type], **options)
    ref = theirs(sched, steps, pred_type)
    close(ours(solver, steps, "dpm_karras", pred_type), ref)
    assert np.abs(ours(solver, steps, "karras", pred_type) - ref).mean() > 1e-4


@pytest.mark.parametrize("variant,pred_type,spacing,grid,options", [
    ("bh2", "eps", "trailing", "trailing", {}),
    ("bh2", "v", "linspace", "dpm_linspace", {}),
    ("bh2", "eps", "leading", "dpm_leading", {}),
    # diffusers' bh1 onto sigma 0 is NaN (B(h) = -inf times a zero residual): compared ending on sigma_min,
    # where diffusers' lower_order_final (order 1 on the last step whatever its end) is turned off
    ("bh1", "eps", "trailing", "trailing@1", dict(final_sigmas_type="sigma_min", lower_order_final=False)),
])
def test_unipc_equals_unipc_multistep_scheduler(variant, pred_type, spacing, grid, options):
    sched = diffusers.UniPCMultistepScheduler(**SD_BETAS, solver_type=variant, timestep_spacing=spacing, steps_offset=1,
                                              prediction_type=PRED[pred_type], **options)
    close(ours("unipc", 12, grid, pred_type, unipc_variant=variant), theirs(sched, 12, pred_type))
