"""Bad values in the text-to-image, VAE and schedule fields of a config: one clear error
naming the field, before anything is built or written."""

import math

import pytest

from configs import scenes, scenes_vae
from orchestration.experiments.training import train


@pytest.mark.parametrize("config,field,value,message", [
    (scenes, "text.max_length", 0, "config.text.max_length must be an integer >= 1, got 0"),
    (scenes, "text.max_length", -3, "config.text.max_length must be an integer >= 1, got -3"),
    (scenes, "text.clip_skip", -1, "config.text.clip_skip must be an integer >= 0, got -1"),
    (scenes, "text.encoder", "", "config.text.encoder must name"),
    (scenes, "latent.vae", "", "config.latent.vae must name"),
    (scenes, "diffusion.beta_start", math.nan, "config.diffusion.beta_start must be a finite number in (0, 1)"),
    (scenes, "diffusion.beta_start", -0.1, "config.diffusion.beta_start must be a finite number in (0, 1)"),
    (scenes, "diffusion.beta_end", 0.0, "config.diffusion.beta_end must be a finite number in (0, 1)"),
    (scenes, "diffusion.beta_start", 0.5, "beta_start=0.5 must be below beta_end=0.012"),
    (scenes, "model.kind", "dit", "config.model.kind is 'dit'"),
    (scenes_vae, "train.kl_weight", -1.0, "config.train.kl_weight must be a finite number >= 0, got -1.0"),
    (scenes_vae, "train.kl_weight", math.inf, "config.train.kl_weight must be a finite number >= 0, got inf"),
])
def test_bad_text_vae_and_beta_fields_write_nothing(tmp_path, config, field, value, message):
    c = config.get_config("smoke")
    if config is scenes:
        c.latent.vae = str(tmp_path / "vae")  # the smoke UNet names no VAE of its own (the command line does)
    section, key = field.split(".")
    if field == "diffusion.beta_start" and value == 0.5:
        c.diffusion.beta_end = 0.012
    c[section][key] = value
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        train(c, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_the_scenes_smoke_run_needs_its_vae_named(tmp_path):
    """configs/scenes.py:smoke names no fixed folder outside its work directory: its VAE is
    given on the command line, and without one the run says how, writing nothing."""
    c = scenes.get_config("smoke")
    with pytest.raises(ValueError, match="config.latent.vae must name .* give --config.latent.vae=runs/scenes_vae"):
        train(c, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_a_missing_vae_workdir_or_package_is_named(tmp_path):
    c = scenes.get_config("smoke")
    c.latent.vae = str(tmp_path / "no_vae")
    with pytest.raises((FileNotFoundError, ValueError), match="no_vae"):
        train(c, tmp_path / "run", progress=False)
    c = scenes.get_config("smoke")
    c.latent.vae = str(tmp_path / "no_vae")
    c.text.encoder = "package:not_a_kairos_package/model"
    with pytest.raises(FileNotFoundError, match="'not_a_kairos_package' named by"):
        train(c, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_an_unknown_lora_init_is_refused_before_anything_is_written(tmp_path):
    from configs import digits

    c = digits.get_config("smoke")
    c.train.lora_rank, c.train.lora_init = 2, "xavier"
    with pytest.raises(ValueError, match="config.train.lora_init is 'xavier'; expected one of normal, peft, gaussian"):
        train(c, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
