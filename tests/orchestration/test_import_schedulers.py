"""Import reproduces the folder's scheduler (issue 27, item 2): each scheduler config SD-family
folders ship, as diffusers writes it, maps onto a sampler whose chain equals diffusers' on the
same network and noise; what it cannot reproduce is a note naming the class or option."""

import json

import pytest

from orchestration.weights.schedulers import sampler_for, sampler_string
from sampling.spec import SamplerSpec
from tests.sampling.diffusers_chain import SD_BETAS, close, diffusers, run_spec, theirs

# (scheduler class, its config as the folder has it, the network's prediction type)
FOLDERS = {
    "sd15_pndm": ("PNDMScheduler", dict(skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False), "eps"),
    "sd21_ddim": ("DDIMScheduler", dict(steps_offset=1, set_alpha_to_one=False, clip_sample=False), "v"),
    "sd2_768_euler_v": ("EulerDiscreteScheduler", dict(steps_offset=1), "v"),  # linspace: the default
    "sdxl_euler": ("EulerDiscreteScheduler", dict(steps_offset=1, timestep_spacing="leading"), "eps"),
    "euler_a": ("EulerAncestralDiscreteScheduler", dict(steps_offset=1, timestep_spacing="leading"), "eps"),
    "euler_karras": ("EulerDiscreteScheduler", dict(use_karras_sigmas=True), "eps"),
    "dpm_trailing": ("DPMSolverMultistepScheduler", dict(timestep_spacing="trailing"), "eps"),
    "dpm_default": ("DPMSolverMultistepScheduler", dict(steps_offset=1), "v"),  # linspace: the default
    "dpm_karras": ("DPMSolverMultistepScheduler", dict(steps_offset=1, use_karras_sigmas=True), "eps"),  # DPM++ 2M Karras
    "unipc_default": ("UniPCMultistepScheduler", dict(steps_offset=1), "eps"),
    "ddim_trailing_alpha_min": ("DDIMScheduler", dict(timestep_spacing="trailing", set_alpha_to_one=False,
                                                      clip_sample=False), "eps"),
    "pndm_v": ("PNDMScheduler", dict(skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False), "v"),
}


def folder_config(name):
    cls, options, pred_type = FOLDERS[name]
    prediction = {"eps": "epsilon", "v": "v_prediction"}[pred_type]
    scheduler = getattr(diffusers, cls)(**SD_BETAS, prediction_type=prediction, **options)
    config = json.loads(json.dumps({**dict(scheduler.config), "_class_name": cls}))  # what the json file holds
    return scheduler, config, pred_type


@pytest.mark.parametrize("name", sorted(FOLDERS))
def test_the_written_sampler_reproduces_the_scheduler(name, monkeypatch):
    scheduler, config, pred_type = folder_config(name)
    values, notes = sampler_for(config, pred_type)
    assert notes == [] or (name == "ddim_trailing_alpha_min" and "divides" in notes[0] and len(notes) == 1), notes
    spec = SamplerSpec.parse(sampler_string({k: v for k, v in values.items() if k != "guidance"} | {"steps": 10}))
    noises = module = None
    if values.get("ancestral"):
        from tests.sampling.diffusers_chain import solver_noises

        noises = solver_noises(10)
        module = pytest.importorskip("diffusers.schedulers.scheduling_euler_ancestral_discrete")
    close(run_spec(spec, pred_type), theirs(scheduler, 10, pred_type, noises, module, monkeypatch))


def test_the_sampler_strings_of_sd_folders():
    assert sampler_string(sampler_for(folder_config("sd15_pndm")[1], "eps")[0]) == \
        "solver=plms;steps=50;grid=leading;guidance=7.5"
    assert sampler_string(sampler_for(folder_config("sd2_768_euler_v")[1], "v")[0]) == \
        "solver=euler;steps=50;grid=linspace;guidance=7.5;init_sigma=1"
    assert sampler_string(sampler_for(folder_config("sdxl_euler")[1], "eps")[0]) == \
        "solver=euler;steps=50;grid=leading@0;guidance=7.5"


@pytest.mark.parametrize("config,words", [
    ({"_class_name": "HeunDiscreteScheduler"}, ["HeunDiscreteScheduler", "ddim on the leading grid"]),
    ({"_class_name": "DDIMScheduler", "clip_sample": True}, ["clip_sample=true"]),
    ({"_class_name": "PNDMScheduler", "skip_prk_steps": False, "steps_offset": 1, "set_alpha_to_one": False},
     ["skip_prk_steps=false", "plms"]),
    ({"_class_name": "DPMSolverMultistepScheduler", "timestep_spacing": "leading"},
     ["timestep_spacing='leading' with steps_offset=0", "grid=dpm_linspace"]),
    ({"_class_name": "DPMSolverMultistepScheduler", "algorithm_type": "sde-dpmsolver++",
      "timestep_spacing": "trailing"}, ["algorithm_type='sde-dpmsolver++'", "dpmpp2m"]),
    ({"_class_name": "EulerDiscreteScheduler", "interpolation_type": "log_linear"}, ["interpolation_type"]),
    ({"_class_name": "DPMSolverMultistepScheduler", "use_karras_sigmas": True, "final_sigmas_type": "sigma_min"},
     ["final_sigmas_type='sigma_min' with Karras sigmas", "grid=dpm_karras"]),
])
def test_what_cannot_be_reproduced_is_a_note_naming_it(config, words):
    values, notes = sampler_for(config, "eps")
    SamplerSpec.parse(sampler_string({k: v for k, v in values.items() if k != "guidance"}))  # a valid sampler
    text = " ".join(notes)
    assert notes and all(w in text for w in words), notes


def test_a_class_that_is_no_diffusers_scheduler_is_refused():
    with pytest.raises(ValueError, match="'FancyScheduler' is not a diffusers scheduler"):
        sampler_for({"_class_name": "FancyScheduler"}, "eps")


@pytest.mark.parametrize("name", sorted(FOLDERS))
def test_export_writes_the_scheduler_that_imports_back_to_the_same_sampler(name):
    from orchestration.weights.schedulers import scheduler_config

    _, config, pred_type = folder_config(name)
    values, _ = sampler_for(config, pred_type)
    spec = SamplerSpec.parse(sampler_string({k: v for k, v in values.items() if k != "guidance"}))
    diffusion = {"num_steps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "schedule": "scaled_linear"}
    written, notes = scheduler_config(spec, diffusion, pred_type)
    assert notes == [] and written["_class_name"] == config["_class_name"], (written, notes)
    again, _ = sampler_for(written, pred_type)
    assert again == values
