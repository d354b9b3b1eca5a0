"""End to end against diffusers: a tiny random StableDiffusionPipeline (with a BPE
tokenizer trained here, offline), saved, imported with ``launch.import_weights``, sampled
with DDIM 10 steps and guidance 7.5 from the pipeline's own initial latents, matches the
pipeline's output image. Bad folders are clear errors that write nothing."""

import json
import re
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from diffusion.convert.tensors import ConversionError  # noqa: E402
from orchestration.generation.draw import draw  # noqa: E402
from orchestration.weights.importer import import_pipeline  # noqa: E402
from orchestration.build.run_loader import load_run  # noqa: E402
from sampling.spec import SamplerSpec  # noqa: E402

CORPUS = ["a small 3 to the left of a thick 7", "a big 5 above a thin 2", "two digits: 1 and 4",
          "a photo of a cat", "a painting of a dog", "an astronaut riding a horse"] * 4
PROMPT = "a photo of an astronaut riding a horse"


def train_clip_tokenizer(folder):
    """The tiny pipelines' CLIP tokenizer (``tests/clip_tokenizer.py``) on ``CORPUS``."""
    from tests.clip_tokenizer import train_clip_tokenizer as train

    return train(folder, CORPUS)


def tiny_pipeline(path):
    torch.manual_seed(0)
    tokenizer = train_clip_tokenizer(path.parent / "bpe")
    text_encoder = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=16, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)).eval()
    unet = diffusers.UNet2DConditionModel(
        block_out_channels=(16, 32), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1, cross_attention_dim=32,
        attention_head_dim=2, norm_num_groups=8, sample_size=8, in_channels=4, out_channels=4).eval()
    vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
                                  down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                                  layers_per_block=1, norm_num_groups=4, sample_size=16).eval()
    scheduler = diffusers.DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                        clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipe = diffusers.StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                             scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                             requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(path, safe_serialization=True)
    return pipe


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    root = tmp_path_factory.mktemp("sd")
    pipe = tiny_pipeline(root / "pipe")
    import_pipeline(root / "pipe", root / "run")
    return pipe, root


def test_import_then_sample_matches_the_diffusers_pipeline(imported):
    pipe, root = imported
    latents = torch.randn((2, 4, 8, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = pipe([PROMPT, "a small 3"], num_inference_steps=10, guidance_scale=7.5, latents=latents,
                   output_type="np").images  # [2, 16, 16, 3] in [0, 1]
    run = load_run(root / "run")
    assert run.config.sample.sampler == "solver=ddim;steps=50;grid=leading;guidance=7.5"
    spec = SamplerSpec.parse("solver=ddim;steps=10;grid=leading;guidance=7.5")
    images, conds = draw(run, run.params(0), spec, 2, prompts=[PROMPT, "a small 3"],
                         x_T=latents.permute(0, 2, 3, 1).numpy())
    ours = np.clip(images / 2 + 0.5, 0.0, 1.0)
    assert ours.shape == ref.shape == (2, 16, 16, 3)
    # float32 through 10 guided UNet calls (each ~1e-6 of its scale apart, see
    # tests/nn/test_sd_unet.py) and the VAE decoder; guidance 7.5 amplifies the
    # conditional-unconditional difference, so the bound is 1e-4 of the [0, 1] range.
    # A wrong grid point, timestep offset or guidance branch moves pixels by >1e-2.
    assert np.abs(ours - ref).max() < 1e-4, np.abs(ours - ref).max()
    assert np.abs(ref[0] - ref[1]).max() > 1e-2  # the prompts matter: the test can fail
    # the context is the CLIP encoder's last hidden state (diffusers' encode_prompt)
    ids = pipe.tokenizer([PROMPT], padding="max_length", max_length=16, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        ctx = pipe.text_encoder(ids)[0].numpy()
    np.testing.assert_allclose(conds["context"][0], ctx[0], atol=1e-5)
    # every sampling part works on an imported model (what the README promises)
    for variant in ("solver=dpmpp2m", "solver=ddim;time_shift=80:300", "solver=ddim;attention_reuse=hurry:3",
                    "solver=ddim;feature_cache=uniform:2"):
        other = SamplerSpec.parse(f"{variant};steps=10;grid=leading;guidance=7.5")
        varied, _ = draw(run, run.params(0), other, 2, prompts=[PROMPT, "a small 3"],
                         x_T=latents.permute(0, 2, 3, 1).numpy())
        change = np.abs(varied - images).max()
        assert np.isfinite(varied).all() and 0 < change < 1.0, (variant, change)


def test_import_refuses_to_overwrite_and_bad_folders_write_nothing(imported, tmp_path):
    _, root = imported
    with pytest.raises(FileExistsError, match="not empty"):
        import_pipeline(root / "pipe", root / "run")
    with pytest.raises(ConversionError, match="model_index.json"):
        import_pipeline(tmp_path, tmp_path / "w1")
    broken = tmp_path / "broken"
    shutil.copytree(root / "pipe", broken)
    shutil.rmtree(broken / "vae")
    with pytest.raises(ConversionError, match=r"\['vae'\]"):
        import_pipeline(broken, tmp_path / "w2")
    shutil.copytree(root / "pipe" / "vae", broken / "vae")
    unet_config = broken / "unet" / "config.json"
    config = json.loads(unet_config.read_text())
    unet_config.write_text(json.dumps({**config, "cross_attention_dim": 16}))
    with pytest.raises(ConversionError, match="shape"):
        import_pipeline(broken, tmp_path / "w3")
    unet_config.write_text(json.dumps(config))
    sched = broken / "scheduler" / "scheduler_config.json"
    sched.write_text(json.dumps({**json.loads(sched.read_text()), "prediction_type": "flow"}))
    with pytest.raises(ConversionError, match="prediction_type='flow'"):
        import_pipeline(broken, tmp_path / "w4")
    sched.write_text(json.dumps({**json.loads(sched.read_text()), "prediction_type": "epsilon",
                                 "_class_name": "FancyScheduler"}))
    with pytest.raises(ConversionError, match="'FancyScheduler' is not a diffusers scheduler"):
        import_pipeline(broken, tmp_path / "w5")
    assert not any((tmp_path / f"w{i}").exists() for i in range(1, 6))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left behind


def test_import_and_sample_from_the_command_line(imported, tmp_path):
    from tests.launch.test_sample_evaluate import assert_one_line_error, probe

    _, root = imported
    not_a_pipeline = tmp_path / "empty"
    not_a_pipeline.mkdir()
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    made, refused, file_given, again, workdir_file = probe(
        "launch.import_weights", ["--diffusers", str(root / "pipe"), "--workdir", str(tmp_path / "w")],
        ["--diffusers", str(not_a_pipeline), "--workdir", str(tmp_path / "w2")],
        ["--diffusers", str(a_file), "--workdir", str(tmp_path / "w3")],
        ["--diffusers", str(root / "pipe"), "--workdir", str(tmp_path / "w")],
        ["--diffusers", str(root / "pipe"), "--workdir", str(a_file)])
    assert made["code"] == 0 and "grid=leading" in made["stdout"], made
    assert_one_line_error(refused, "has no model_index.json")
    assert_one_line_error(file_given, "is not a directory")
    assert_one_line_error(again, "exists and is not empty; nothing is overwritten")
    assert_one_line_error(workdir_file, f"--workdir {a_file} is a file, not a directory")
    assert a_file.read_text() == "x"
    prompts_file, empty_file, binary = tmp_path / "prompts.txt", tmp_path / "blank.txt", tmp_path / "bin.txt"
    prompts_file.write_text("a cat\n\n  a dog  \n")
    empty_file.write_text("\n \n")
    binary.write_bytes(b"\xff\xfe\x00garbage")
    w = str(tmp_path / "w")
    results = probe("launch.sample",
                    ["--workdir", w, "--steps", "3", "--num", "3", "--prompt", "a horse", "--prompts_file",
                     str(prompts_file), "--negative_prompt", "blurry"],
                    ["--workdir", w, "--steps", "3", "--num", "3"],
                    ["--workdir", w, "--prompts_file", str(empty_file)],
                    ["--workdir", w, "--prompts_file", str(tmp_path / "missing.txt")],
                    ["--workdir", w, "--prompts_file", str(binary)],
                    ["--workdir", w, "--prompt", "a cat", "--num", "0"],
                    ["--workdir", w, "--prompt", "a cat", "--guidance", "nan"],
                    ["--workdir", w, "--steps", "3", "--num", "3", "--seed", "1", "--prompt", "a horse " * 12,
                     "--prompt", "a 🐱"])
    ok, no_prompt, blank, missing, not_text, zero, nan, lossy = results
    assert ok["code"] == 0, ok
    assert_one_line_error(no_prompt, "is a text-to-image model: give --prompt")
    assert_one_line_error(blank, "holds no prompt")
    assert_one_line_error(missing, "cannot be read")
    assert_one_line_error(not_text, "cannot be read as UTF-8 text")
    assert_one_line_error(zero, "--num and --batch_size must be >= 1, got 0")
    assert_one_line_error(nan, "bad guidance 'nan'")
    assert lossy["code"] == 0, lossy  # what the tokenizer loses is said, and sampling goes on
    assert [line for line in ok["stderr"].splitlines() if line.startswith("warning: ")] == [  # this tiny vocabulary
        "warning: prompt 'blurry': the tokenizer has no token for 'blurry' (in whole or in part), which becomes "
        "'<|endoftext|>'"]
    warnings = [line for line in lossy["stderr"].splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 2, warnings
    assert re.search(r"the text encoder takes 16: the last \d+ are cut off", warnings[0]), warnings
    assert "the tokenizer has no token for '🐱'" in warnings[1], warnings
    npzs = sorted((tmp_path / "w" / "samples").glob("*.npz"), key=lambda p: "seed1" in p.name)
    assert len(npzs) == 2  # the failures wrote nothing
    npz = npzs[0]
    data = np.load(npz)
    assert data["images"].shape == (3, 16, 16, 3) and data["images"].dtype == np.uint8  # decoded by the VAE
    assert data["prompts"].tolist() == ["a horse", "a cat", "a dog"]
    assert json.loads(str(data["settings"]))["negative_prompt"] == "blurry"
    from orchestration.generation.phast_search import calibration_prompts
    from orchestration.generation.scoring import scoring_for

    with pytest.raises(ValueError, match="give calibration prompts with --prompt"):
        calibration_prompts(load_run(w), 4)  # what launch.phast checks first: no caption split to default to
    assert calibration_prompts(load_run(w), 3, ["a", "b"]) == ["a", "b", "a"]
    with pytest.raises(ValueError, match="scores digits models .*, text-to-image digit-scenes models .* which has no "
                                         "metric here"):
        scoring_for(load_run(w), 10)  # what launch.evaluate calls before it writes: no metric for 'none' data


def test_an_imported_config_is_not_trainable_without_a_dataset_and_kinds_are_checked(imported):
    import ml_collections

    from orchestration.build.validation import validate_config
    from orchestration.workdir.directory import read_config

    _, root = imported
    config = ml_collections.ConfigDict(read_config(root / "run" / "config.json"))
    with pytest.raises(ValueError, match="config.data.name='none'"):
        validate_config(config, "train")
    config.data.name, config.model.kind = "scenes", "dit"
    with pytest.raises(ValueError, match="config.model.kind is 'dit'"):
        validate_config(config, "train")


def test_a_failed_or_killed_import_leaves_no_work_directory(imported, tmp_path, monkeypatch):
    import os
    import signal
    import subprocess
    import sys
    import time

    from diffusion.train import checkpoint
    from tests.conftest import ROOT

    _, root = imported

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint, "save", full_disk)
    with pytest.raises(OSError, match="No space"):
        import_pipeline(root / "pipe", tmp_path / "w")
    assert list(tmp_path.iterdir()) == []  # neither the work directory nor its temporary folder
    monkeypatch.undo()
    # SIGKILL once the temporary folder holds something: the target never appears half-written
    code = f"from orchestration.weights.importer import import_pipeline; import_pipeline({str(root / 'pipe')!r}, {str(tmp_path / 'k')!r})"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    deadline = time.time() + 120
    while time.time() < deadline and not any((p / "components").exists() for p in tmp_path.glob(".k-import-*")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "k").exists()
    import_pipeline(root / "pipe", tmp_path / "k")  # the same command again completes
    assert load_run(tmp_path / "k").steps == [0]
