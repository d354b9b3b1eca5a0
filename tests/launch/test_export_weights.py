"""Weights out (issue 27, item 7): an imported run -> ``launch.export_weights`` -> a diffusers
folder that ``StableDiffusionPipeline.from_pretrained`` loads and samples with our plain
sampler's image; export then import is the identity on every tensor; a changed UNet (what a
fine-tune or distillation writes) goes out changed. A LoRA fine-tune's ``--lora_file``:
tests/launch/test_finetune.py."""

import json

import numpy as np
import pytest

from tests.launch.test_import_weights import PROMPT, diffusers, tiny_pipeline, torch

from orchestration.build.run_loader import load_run  # noqa: E402
from orchestration.generation.draw import draw  # noqa: E402
from orchestration.generation.export import export_diffusers  # noqa: E402
from orchestration.weights.importer import import_pipeline  # noqa: E402
from sampling.spec import SamplerSpec  # noqa: E402


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    pipe = tiny_pipeline(root / "pipe")
    pipe.scheduler = diffusers.PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                             skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False)
    pipe.save_pretrained(root / "pndm", safe_serialization=True)
    import_pipeline(root / "pndm", root / "run")
    return root


def test_export_import_is_the_identity_on_every_tensor(imported):
    from diffusion.convert.tensors import load_state_dict

    root = imported
    record = export_diffusers(root / "run", root / "out")
    assert record["scheduler"] == "PNDMScheduler" and record["notes"] == []
    for name in ("unet", "vae", "text_encoder"):
        a, b = load_state_dict(root / "pndm" / name), load_state_dict(root / "out" / name)
        a = {k: v for k, v in a.items() if "position_ids" not in k}
        assert sorted(a) == sorted(b), name
        for k in a:
            np.testing.assert_array_equal(np.asarray(a[k], np.float32), b[k], err_msg=f"{name}: {k}")
    sched = json.loads((root / "out" / "scheduler" / "scheduler_config.json").read_text())
    assert sched["skip_prk_steps"] and sched["steps_offset"] == 1 and not sched["set_alpha_to_one"]
    with pytest.raises(FileExistsError, match="--overwrite"):
        export_diffusers(root / "run", root / "out")


def test_a_changed_unet_exports_and_diffusers_samples_our_image(imported):
    """A UNet changed as a fine-tune would change it, exported: diffusers' pipeline loaded from the
    folder gives our plain sampler's image of that run (within 1e-4 in [0, 1])."""
    from diffusion.train import checkpoint

    root = imported
    run = load_run(root / "run")
    params = run.params(0)
    import jax

    changed = jax.tree.map(lambda p: p * 1.01 + 1e-3, params)
    manager = checkpoint.make_manager(root / "run", keep_last=2)
    try:
        checkpoint.save(manager, 1, {"ema_params": changed}, json.loads((root / "run" / "config.json").read_text()))
        manager.wait_until_finished()
    finally:
        manager.close()
    export_diffusers(root / "run", root / "student")
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(root / "student", safety_checker=None,
                                                             requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    assert type(pipe.scheduler).__name__ == "PNDMScheduler"
    latents = torch.randn((2, 4, 8, 8), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = pipe([PROMPT, "a small 3"], num_inference_steps=10, guidance_scale=7.5, latents=latents.clone(),
                   output_type="np").images
    run = load_run(root / "run")
    spec = SamplerSpec.parse(run.config.sample.sampler).merged({"steps": 10})
    images, _ = draw(run, run.params(1), spec, 2, prompts=[PROMPT, "a small 3"],
                     x_T=latents.permute(0, 2, 3, 1).numpy())
    ours = np.clip(images / 2 + 0.5, 0.0, 1.0)
    assert np.abs(ours - ref).max() < 1e-4, np.abs(ours - ref).max()
    original, _ = draw(run, run.params(0), spec, 2, prompts=[PROMPT, "a small 3"],
                       x_T=latents.permute(0, 2, 3, 1).numpy())
    assert np.abs(original - images).max() > 1e-2  # the change went out: the test can fail


def test_export_refusals_are_one_line_errors(imported, tmp_path):
    from tests.launch.test_sample_evaluate import assert_one_line_error, probe

    root = imported
    a_file = tmp_path / "f"
    a_file.write_text("x")
    run = ["--workdir", str(root / "run")]
    exists, not_a_run, is_file, nothing, no_lora, not_safetensors = probe(
        "launch.export_weights", [*run, "--diffusers", str(root / "out")],
        ["--workdir", str(tmp_path), "--diffusers", str(tmp_path / "o")],
        [*run, "--diffusers", str(a_file), "--overwrite"], run,
        [*run, "--diffusers", str(tmp_path / "o"), "--lora_file", str(tmp_path / "l.safetensors")],
        [*run, "--lora_file", str(tmp_path / "l.pt")])
    assert_one_line_error(exists, "exists; pass --overwrite")
    assert_one_line_error(not_a_run, "has no config.json")
    assert_one_line_error(is_file, "is a file; choose a folder")
    assert_one_line_error(nothing, "nothing to write: give --diffusers OUT")
    assert_one_line_error(no_lora, "was not trained with LoRA (train.lora_rank = 0)")
    assert_one_line_error(not_safetensors, "must end in .safetensors")
    assert a_file.read_text() == "x" and sorted(tmp_path.iterdir()) == [a_file]  # the refused LoRA wrote no folder


def test_an_export_stopped_mid_write_leaves_no_folder(imported, tmp_path, monkeypatch):
    from orchestration.generation import export

    calls = []

    def die_on_second(path, tensors):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as a kill would stop it, one component written
        return original(path, tensors)
    original = export._save
    monkeypatch.setattr(export, "_save", die_on_second)
    with pytest.raises(KeyboardInterrupt):
        export_diffusers(imported / "run", tmp_path / "out")
    assert list(tmp_path.iterdir()) == []
