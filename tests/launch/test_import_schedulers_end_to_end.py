"""A researcher's first act (issue 27): import the folder they have and see the image diffusers
gave them. One tiny random pipeline saved with each stock scheduler of the SD family (SD 1.x's
PNDM, SD 2.x's 768-v Euler, SDXL-style leading Euler, DPM-Solver++ on trailing steps), imported
with ``launch.import_weights``; its default sampler, from diffusers' own latents, gives
diffusers' image within 1e-4 in [0, 1]; the CLI's ``--initial_noise`` gives its uint8 image
but for rounding. Scheduler-by-scheduler parity lives at the solver level
(tests/sampling/test_diffusers_schedulers.py)."""

import json

import numpy as np
import pytest

from tests.launch.test_import_weights import PROMPT, diffusers, tiny_pipeline, torch

from orchestration.build.run_loader import load_run  # noqa: E402
from orchestration.generation.draw import draw  # noqa: E402
from orchestration.weights.importer import import_pipeline  # noqa: E402
from sampling.spec import SamplerSpec  # noqa: E402

SD_BETAS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1)
FAMILIES = {
    "sd15_pndm": (lambda: diffusers.PNDMScheduler(**SD_BETAS, skip_prk_steps=True, set_alpha_to_one=False),
                  "solver=plms;steps=50;grid=leading;guidance=7.5"),
    "sd2_768_euler_v": (lambda: diffusers.EulerDiscreteScheduler(**SD_BETAS, prediction_type="v_prediction"),
                        "solver=euler;steps=50;grid=linspace;guidance=7.5;init_sigma=1"),
    "sdxl_style_euler": (lambda: diffusers.EulerDiscreteScheduler(**SD_BETAS, timestep_spacing="leading"),
                         "solver=euler;steps=50;grid=leading@0;guidance=7.5"),
    "dpm_trailing": (lambda: diffusers.DPMSolverMultistepScheduler(**SD_BETAS, timestep_spacing="trailing"),
                     "solver=dpmpp2m;steps=50;grid=trailing;guidance=7.5"),
}


@pytest.fixture(scope="module")
def base_pipe(tmp_path_factory):
    return tiny_pipeline(tmp_path_factory.mktemp("sd") / "pipe")


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_imported_default_sampler_gives_diffusers_image(base_pipe, family, tmp_path):
    make, sampler = FAMILIES[family]
    pipe = base_pipe
    pipe.scheduler = make()
    pipe.save_pretrained(tmp_path / "pipe", safe_serialization=True)
    record = import_pipeline(tmp_path / "pipe", tmp_path / "run")
    assert record["sampler"] == sampler and record["notes"] == [], record
    latents = torch.randn((2, 4, 8, 8), generator=torch.Generator().manual_seed(1))
    prompts = [PROMPT, "a small 3"]
    with torch.no_grad():
        ref = pipe(prompts, num_inference_steps=10, guidance_scale=7.5, latents=latents.clone(),
                   output_type="np").images
    run = load_run(tmp_path / "run")
    spec = SamplerSpec.parse(run.config.sample.sampler).merged({"steps": 10})
    images, _ = draw(run, run.params(0), spec, 2, prompts=prompts, x_T=latents.permute(0, 2, 3, 1).numpy())
    ours = np.clip(images / 2 + 0.5, 0.0, 1.0)
    assert np.abs(ours - ref).max() < 1e-4, np.abs(ours - ref).max()
    assert np.abs(ref[0] - ref[1]).max() > 1e-2


def test_initial_noise_from_the_command_line_gives_diffusers_uint8_image(base_pipe, tmp_path):
    from tests.launch.test_sample_evaluate import assert_one_line_error, probe

    pipe = base_pipe
    pipe.scheduler = FAMILIES["sd15_pndm"][0]()
    pipe.save_pretrained(tmp_path / "pipe", safe_serialization=True)
    import_pipeline(tmp_path / "pipe", tmp_path / "run")
    latents = torch.randn((2, 4, 8, 8), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = pipe([PROMPT] * 2, num_inference_steps=10, guidance_scale=7.5, latents=latents.clone(),
                   output_type="np").images
    ref_uint8 = (ref * 255).round().astype(np.uint8)  # diffusers' numpy_to_pil
    good, nchw, nan, pickled, text, empty = (tmp_path / f"{n}.npy" for n in ("good", "nchw", "nan", "pickled", "text",
                                                                             "empty"))
    np.save(empty, np.zeros((0, 8, 8, 4), np.float32))
    np.save(good, latents.permute(0, 2, 3, 1).numpy())
    np.save(nchw, latents.numpy())
    np.save(nan, np.full((2, 8, 8, 4), np.nan, np.float32))
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    text.write_text("not an array")
    w = str(tmp_path / "run")
    common = ["--workdir", w, "--steps", "10", "--guidance", "7.5", "--prompt", PROMPT]
    ok, wrong_layout, not_finite, objects, garbage, count, missing, none = probe(
        "launch.sample", common + ["--initial_noise", str(good)], common + ["--initial_noise", str(nchw)],
        common + ["--initial_noise", str(nan)], common + ["--initial_noise", str(pickled)],
        common + ["--initial_noise", str(text)], common + ["--initial_noise", str(good), "--num", "3"],
        common + ["--initial_noise", str(tmp_path / "missing.npy")], common + ["--initial_noise", str(empty)])
    assert ok["code"] == 0, ok
    assert_one_line_error(wrong_layout, "channels first, as diffusers' latents")
    assert_one_line_error(not_finite, "NaN or infinite")
    assert_one_line_error(objects, "is not a readable .npy array")
    assert_one_line_error(garbage, "is not a readable .npy array")
    assert_one_line_error(count, "holds 2 samples' noise but --num is 3")
    assert_one_line_error(missing, "is not a file")
    assert_one_line_error(none, "with N >= 1")
    (npz,) = (tmp_path / "run" / "samples").glob("*.npz")
    data = np.load(npz)
    diff = np.abs(data["images"].astype(int) - ref_uint8.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.02, (diff.max(), (diff > 0).mean())
    settings = json.loads(str(data["settings"]))
    assert settings["initial_noise"]["file"] == str(good.resolve()) and "_noise" in npz.name
