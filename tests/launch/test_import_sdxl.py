"""SDXL (issue 27, item 4): a tiny random StableDiffusionXLPipeline (two CLIP text encoders, the
second with a projection; the text_time UNet; a VAE with SDXL's scaling factor; Euler on leading
steps), saved, imported, sampled from diffusers' own latents with the imported sampler: diffusers'
image within 1e-4 in [0, 1], with the empty negative prompt zeroed as the pipeline does
(force_zeros_for_empty_prompt) and with a negative prompt encoded."""

import numpy as np
import pytest

from tests.launch.test_import_weights import diffusers, torch, train_clip_tokenizer, transformers

from orchestration.build.run_loader import load_run  # noqa: E402
from orchestration.generation.draw import draw  # noqa: E402
from orchestration.weights.importer import import_pipeline  # noqa: E402
from sampling.spec import SamplerSpec  # noqa: E402

PROMPTS = ["a photo of an astronaut riding a horse", "a small 3"]


def tiny_sdxl(path):
    torch.manual_seed(0)
    tokenizer = train_clip_tokenizer(path.parent / "bpe")
    config = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=3,
                  num_attention_heads=4, max_position_embeddings=16, hidden_act="gelu", bos_token_id=tokenizer.bos_token_id,
                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    text_encoder = transformers.CLIPTextModel(transformers.CLIPTextConfig(**config)).eval()
    text_encoder_2 = transformers.CLIPTextModelWithProjection(
        transformers.CLIPTextConfig(**config, projection_dim=16)).eval()
    unet = diffusers.UNet2DConditionModel(
        block_out_channels=(16, 32), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=16 + 48,
        cross_attention_dim=64, norm_num_groups=8).eval()
    vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
                                  down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                                  layers_per_block=1, norm_num_groups=4, sample_size=16, scaling_factor=0.13025).eval()
    scheduler = diffusers.EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                                 steps_offset=1, timestep_spacing="leading")
    pipe = diffusers.StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                               tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet, scheduler=scheduler,
                                               add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(path, safe_serialization=True)
    return pipe


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    root = tmp_path_factory.mktemp("sdxl")
    pipe = tiny_sdxl(root / "pipe")
    record = import_pipeline(root / "pipe", root / "run")
    return pipe, root, record


@pytest.mark.parametrize("negative", [None, "blurry"])
def test_import_then_sample_matches_the_sdxl_pipeline(imported, negative):
    pipe, root, record = imported
    assert record["sampler"] == "solver=euler;steps=50;grid=leading@0;guidance=7.5" and record["notes"] == []
    latents = torch.randn((2, 4, 8, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = pipe(PROMPTS, negative_prompt=negative and [negative] * 2, num_inference_steps=10, guidance_scale=5.0,
                   latents=latents.clone(), output_type="np").images
    run = load_run(root / "run")
    spec = SamplerSpec.parse(run.config.sample.sampler).merged({"steps": 10, "guidance": 5.0})
    images, conds = draw(run, run.params(0), spec, 2, prompts=PROMPTS, negative_prompt=negative or "",
                         x_T=latents.permute(0, 2, 3, 1).numpy())
    ours = np.clip(images / 2 + 0.5, 0.0, 1.0)
    assert ours.shape == ref.shape == (2, 16, 16, 3)
    assert np.abs(ours - ref).max() < 1e-4, np.abs(ours - ref).max()
    assert np.abs(ref[0] - ref[1]).max() > 1e-2
    assert conds["time_ids"].tolist() == [[16, 16, 0, 0, 16, 16]] * 2
    assert (np.abs(conds["null_text_embeds"]).max() == 0) == (negative is None)


def test_second_prompts_and_size_conditions(imported, tmp_path):
    """--prompt_2 / --negative_prompt_2 and the micro-conditioning, through the CLI's own path."""
    from orchestration.generation.write_samples import write_samples

    pipe, root, _ = imported
    latents = torch.randn((2, 4, 8, 8), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = pipe(PROMPTS, prompt_2=["a big 5", "two digits"], negative_prompt=["blurry"] * 2,
                   negative_prompt_2=["a thin 2"] * 2, original_size=(32, 24), crops_coords_top_left=(4, 2),
                   target_size=(16, 16), num_inference_steps=6, guidance_scale=4.0, latents=latents.clone(),
                   output_type="np").images
    noise = tmp_path / "latents.npy"
    np.save(noise, latents.permute(0, 2, 3, 1).numpy())
    written = write_samples(root / "run", overrides={"steps": 6, "guidance": 4.0}, prompts=PROMPTS,
                            negative_prompt="blurry", initial_noise=noise, progress=False,
                            sdxl={"prompts_2": ["a big 5", "two digits"], "negative_prompt_2": "a thin 2",
                                  "original_size": (32, 24), "crop": (4, 2), "target_size": (16, 16)})
    ours = np.load(written.paths[0])["images"].astype(int)
    diff = np.abs(ours - (ref * 255).round().astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.02, (diff.max(), (diff > 0).mean())


def test_bad_sdxl_flags_are_one_line_errors(imported):
    from orchestration.build.frozen import text_conds
    from tests.launch.test_sample_evaluate import assert_one_line_error, probe

    _, root, _ = imported
    w = str(root / "run")
    zero, short = probe("launch.sample", ["--workdir", w, "--prompt", "a", "--original_size", "0,5"],
                        ["--workdir", w, "--prompt", "a", "--crop", "3"])
    assert_one_line_error(zero, "--original_size takes two integers >= 1 as A,B, got '0,5'")
    assert_one_line_error(short, "--crop takes two integers >= 0 as A,B, got '3'")
    with pytest.raises(ValueError, match="apply to SDXL runs only"):
        text_conds(load_run(root / "run").prompt_encoder().first, ["a"], "", {"crop": (0, 0)})


def test_an_sdxl_run_exports_to_a_folder_diffusers_samples_the_same(imported):
    """Export then diffusers' StableDiffusionXLPipeline.from_pretrained: every tensor as imported, the
    same image."""
    from diffusion.convert.tensors import load_state_dict
    from orchestration.generation.export import export_diffusers

    pipe, root, _ = imported
    record = export_diffusers(root / "run", root / "out")
    assert record["scheduler"] == "EulerDiscreteScheduler" and record["notes"] == []
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        a, b = load_state_dict(root / "pipe" / name), load_state_dict(root / "out" / name)
        a = {k: v for k, v in a.items() if "position_ids" not in k}
        assert sorted(a) == sorted(b) and all(np.array_equal(np.asarray(a[k], np.float32), b[k]) for k in a), name
    again = diffusers.StableDiffusionXLPipeline.from_pretrained(root / "out", add_watermarker=False)
    again.set_progress_bar_config(disable=True)
    latents = torch.randn((2, 4, 8, 8), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        want = pipe(PROMPTS, num_inference_steps=4, guidance_scale=5.0, latents=latents.clone(), output_type="np").images
        got = again(PROMPTS, num_inference_steps=4, guidance_scale=5.0, latents=latents.clone(),
                    output_type="np").images
    np.testing.assert_allclose(got, want, atol=1e-6)
